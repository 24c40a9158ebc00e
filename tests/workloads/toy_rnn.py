"""Small models whose CPU kernels allocate what torch's fake kernels do not (see
accumbench/meters/fake_kernels.py): an LSTM (oneDNN's training workspace, one per layer and
direction) and an unfold/fold pair (`im2col`/`col2im` keep the larger of input and output)."""

import torch
import torch.nn.functional as F
from torch import nn

from accumbench import Workload

VOCAB, SEQ = 32, 12


class ToyLSTM(nn.Module):
    """Embedding -> 2-layer LSTM -> head; `bidirectional` runs each layer both ways."""

    def __init__(self, bidirectional: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.lstm = nn.LSTM(16, 24, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(48 if bidirectional else 24, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(out)


def lstm(bidirectional: bool = False) -> Workload:
    def make_batch(n, g):
        ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
        return ids, ids

    return Workload(
        name="toy-lstm" + ("-bi" if bidirectional else ""),
        build_model=lambda: ToyLSTM(bidirectional),
        make_batch=make_batch,
        loss=lambda logits, batch: F.cross_entropy(logits.reshape(-1, VOCAB), batch[1].reshape(-1)),
        tokens_per_sample=SEQ,
        options={"bidirectional": bidirectional},
    )


class ToyUnfold(nn.Module):
    """A convolution written as unfold -> matmul, then folded back: `im2col` with an output
    smaller than its input (stride 3), `col2im` in the forward and both in the backward."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3 * 9) * 0.1)
        self.head = nn.Linear(8 * 25 + 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, 3, stride=3)                          # n, 27, 25 (input n, 3, 16, 16)
        y = (self.weight @ cols).flatten(1)                      # n, 200
        folded = F.fold(cols, (16, 16), 3, stride=3)             # n, 3, 16, 16
        return self.head(torch.cat([y, folded.mean((2, 3))], 1))


def unfold() -> Workload:
    return Workload(
        name="toy-unfold",
        build_model=ToyUnfold,
        make_batch=lambda n, g: (torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)),
        loss=lambda logits, batch: F.cross_entropy(logits, batch[1]),
    )
