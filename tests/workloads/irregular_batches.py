"""Plug-in workloads whose steps change sizes in ways the estimate's shortcuts must notice
(tests/test_estimate_irregular.py): a micro-step that does not repeat the one before it, a
micro-batch size whose batch is not another's scaled, a step whose gradients keep the layout
of the first micro-batch size, and sizes decided by the batch's values.

- `dynamic_length`: each micro-batch is padded to its own random length, so the micro-steps
  of one optimizer step differ in shape.
- `padded_to_longest`: each micro-batch is as long as its longest sample, rounded up to 32, so
  one size's batch is not another's with the batch dimension scaled.
- `batch_nonzero`: selects tokens with `nonzero` on the batch and sums them per row
  (`index_add`): same shapes in every micro-batch, sizes that follow the batch's values.
- `batch_mask`: `h[x > k]` and `masked_select(h, mask)` on an activation `h` with a mask made
  from the batch: the output size depends on the mask only.
- `ctc`: `F.ctc_loss` with target lengths from the batch (log_alpha is as long as the
  longest target).
- `stolen_grad`: a learned token prepended to each sequence; at micro-batch 1 AccumulateGrad
  keeps its gradient as a view into the sequence's gradient (its whole storage lives on with
  `zero_grad(set_to_none=False)`), at larger ones it gets a gradient of its own.
- `activation_mask`: `h[h > 0]` on an activation: its size depends on the weights, which the
  estimate refuses.
- `packed`: `pack_padded_sequence` with lengths from the batch into an LSTM, which the estimate
  refuses, saying why.
- `pad8`, `periodic`, `layer_drop`, `branch8` (`Irregular`): sizes that neither the batch's
  shapes nor its values tell: the batch padded to a multiple of 8 rows inside the model, a
  regulariser every 5th forward counted by a buffer, blocks skipped with `torch.rand`
  (LayerDrop), a head that only micro-batches of 8 or more train (no optimizer state below).

Used as `--workload tests/workloads/irregular_batches.py:dynamic_length`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from accumbench.workloads.base import Workload

VOCAB, WIDTH, SEQ = 64, 32, 16


class TokenMLP(nn.Module):
    """Embedding -> Linear-GELU-Linear over the vocabulary, per token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.up = nn.Linear(WIDTH, 4 * WIDTH)
        self.head = nn.Linear(4 * WIDTH, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.up(self.embed(ids))))


def _token_loss(logits: torch.Tensor, batch) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch[1].reshape(-1))


def _dynamic_batch(n: int, generator: torch.Generator):
    length = int(torch.randint(4, 33, (1,), generator=generator))
    return (torch.randint(1, VOCAB, (n, length), generator=generator),
            torch.randint(0, VOCAB, (n, length), generator=generator))


def dynamic_length() -> Workload:
    """Token model on micro-batches padded to a random length each."""
    return Workload(name="irregular-dynamic-length", build_model=TokenMLP, make_batch=_dynamic_batch,
                    loss=_token_loss)


def _padded_batch(n: int, generator: torch.Generator):
    tokens = torch.randint(1, VOCAB, (n, 128), generator=generator)
    lengths = torch.randint(2, 129, (n,), generator=generator)
    length = -(-int(lengths.max()) // 32) * 32
    keep = torch.arange(length) < lengths[:, None]
    return tokens[:, :length] * keep, torch.randint(0, VOCAB, (n, length), generator=generator)


def padded_to_longest() -> Workload:
    """Token model on micro-batches as long as their longest sample (rounded up to 32)."""
    return Workload(name="irregular-padded", build_model=TokenMLP, make_batch=_padded_batch, loss=_token_loss)


def _classify_batch(n: int, generator: torch.Generator):
    return torch.randint(1, VOCAB, (n, SEQ), generator=generator), torch.randint(0, 4, (n,), generator=generator)


def _classify_loss(logits: torch.Tensor, batch) -> torch.Tensor:
    return F.cross_entropy(logits, batch[1])


def _classifier(name: str, build_model) -> Workload:
    """A classifier workload on token batches of one shape (the model decides what is irregular)."""
    return Workload(name=name, build_model=build_model, make_batch=_classify_batch, loss=_classify_loss)


class BatchNonzero(nn.Module):
    """Pools the tokens above the vocabulary's middle, found with `nonzero` on the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.head = nn.Linear(32 * WIDTH, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        picked = torch.nonzero((ids > VOCAB // 2).reshape(-1)).squeeze(1)  # as many as the batch has
        # Wide activations of the picked tokens only: they make the step's peak.
        selected = F.gelu(h.reshape(-1, WIDTH)[picked].repeat(1, 32))
        pooled = torch.zeros(ids.shape[0], 32 * WIDTH).index_add(0, picked // ids.shape[1], selected)
        return self.head(pooled)


def batch_nonzero() -> Workload:
    """Sizes that follow the batch's values, in micro-batches of one shape."""
    return _classifier("irregular-batch-nonzero", BatchNonzero)


class BatchMask(nn.Module):
    """Boolean-mask indexing and masked_select of an activation, the mask from the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        mask = ids > VOCAB // 2
        pooled = self.head(h[mask]).mean(0, keepdim=True)
        scale = torch.masked_select(h, mask[..., None]).square().mean()
        return (pooled * scale).expand(ids.shape[0], 4)


def batch_mask() -> Workload:
    """`h[mask]` and `masked_select(h, mask)` with a mask from the batch."""
    return _classifier("irregular-batch-mask", BatchMask)


CLASSES, FRAMES, TARGET = 12, 20, 6


class FrameModel(nn.Module):
    """Per-frame features -> class scores, for CTC."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 32)
        self.out = nn.Linear(32, CLASSES)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.up(frames)))


def _ctc_batch(n: int, generator: torch.Generator):
    return {"frames": torch.randn(n, FRAMES, 16, generator=generator),
            "targets": torch.randint(1, CLASSES, (n, TARGET), generator=generator),
            "target_lengths": torch.randint(1, TARGET + 1, (n,), generator=generator),
            "input_lengths": torch.full((n,), FRAMES, dtype=torch.long)}


def _ctc_loss(logits: torch.Tensor, batch) -> torch.Tensor:
    log_probs = logits.log_softmax(-1).transpose(0, 1)  # frames, batch, classes
    return F.ctc_loss(log_probs, batch["targets"], batch["input_lengths"], batch["target_lengths"],
                      zero_infinity=True)


def ctc() -> Workload:
    """CTC loss whose log_alpha is as long as the batch's longest target."""
    return Workload(name="irregular-ctc", build_model=FrameModel, make_batch=_ctc_batch, loss=_ctc_loss,
                    forward=lambda model, batch, task=None: model(batch["frames"]))


class StolenGrad(nn.Module):
    """A learned token prepended to every sequence, then pooled and classified."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        h = torch.cat([self.token.expand(ids.shape[0], -1, -1), h], dim=1)
        return self.head(h.mean(1))


def stolen_grad() -> Workload:
    """Gradients whose layout depends on the micro-batch a run starts with."""
    return _classifier("irregular-stolen-grad", StolenGrad)


class ActivationMask(nn.Module):
    """Selects the positive entries of an activation: a size the weights decide."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.head(h.mean(1)) + h[h > 0].sum() * 0


def activation_mask() -> Workload:
    """`h[h > 0]`: refused by the estimate."""
    return _classifier("irregular-activation-mask", ActivationMask)


class Packed(nn.Module):
    """An LSTM over a packed sequence whose lengths come from the batch (nonzero token count)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.rnn = nn.LSTM(WIDTH, WIDTH, batch_first=True)
        self.head = nn.Linear(WIDTH, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids > VOCAB // 4).sum(1).clamp(min=1)
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.head(h[-1])


def packed() -> Workload:
    """`pack_padded_sequence` into an LSTM: refused by the estimate, saying why."""
    return _classifier("irregular-packed", Packed)


class Irregular(nn.Module):
    """A classifier of token batches whose step sizes follow `kind` (see the module docstring)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.embed = nn.Embedding(VOCAB, 16)
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(4))
        self.wide = nn.Linear(16, 256)
        self.back = nn.Linear(256, 4)
        self.head = nn.Linear(16, 4)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, tokens):
        x = self.embed(tokens).mean(1)
        rows = x.shape[0]
        if self.kind == "pad8":
            x = F.pad(x, (0, 0, 0, -(-rows // 8) * 8 - rows))
        self.calls += 1
        for block in self.blocks:
            if self.kind == "layer_drop" and torch.rand(()) < 0.5:
                continue
            x = x + torch.relu(block(x))
        out = self.head(x)[:rows]
        if self.kind == "branch8" and rows >= 8:  # a head only large micro-batches train
            out = out + self.back(torch.relu(self.wide(x[:rows])))
        if self.kind == "periodic" and int(self.calls) % 5 == 0:
            wide = self.wide(x[:rows])
            out = out + 1e-6 * torch.einsum("bi,bj->bij", wide, wide).mean((1, 2)).unsqueeze(-1)
        return out


def pad8() -> Workload:
    return _classifier("pad8", lambda: Irregular("pad8"))


def periodic() -> Workload:
    return _classifier("periodic", lambda: Irregular("periodic"))


def layer_drop() -> Workload:
    return _classifier("layer-drop", lambda: Irregular("layer_drop"))


def branch8() -> Workload:
    return _classifier("branch8", lambda: Irregular("branch8"))
