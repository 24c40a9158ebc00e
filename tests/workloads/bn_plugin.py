"""Plug-in workloads for the gradient-equivalence tests: small MLPs, each with one known way
(or an unknown one) of making N accumulated micro-batches differ from one large batch.

- `bn_mlp`: a BatchNorm1d layer named `stem_bn` (the check must name it).
- `dropout_mlp`: an `nn.Dropout(p=0.5)` module named `drop`.
- `noisy_mlp`: Gaussian noise added in forward with `torch.randn_like`: randomness that no
  module setting switches off.
- `bn_no_stats_mlp`, `dropout_centering_mlp`, `nan_mlp`: BatchNorm without running statistics;
  functional dropout (training only) over a layer that mixes samples; nan outputs.
- `centering_mlp`: subtracts the batch mean of the hidden layer (a hand-made layer that mixes
  samples, which no diagnosis knows): not equivalent and unexplained.
- `float32_only_mlp`: forward multiplies by a float32 tensor it makes itself, so a float64
  check fails (the CLI hints at --dtype float32).
- `dict_batch_mlp`: batches are dicts {"inputs", "targets"}: the check splits them too.

Used as `--workload tests/workloads/bn_plugin.py:bn_mlp`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from accumbench.workloads.base import Workload

D_IN, HIDDEN, CLASSES = 12, 16, 5


class MLP(nn.Module):
    """Linear -> [one optional defect] -> ReLU -> Linear."""

    def __init__(self, defect: str = "") -> None:
        super().__init__()
        self.defect = defect
        self.fc = nn.Linear(D_IN, HIDDEN)
        if defect == "bn":
            self.stem_bn = nn.BatchNorm1d(HIDDEN)
        if defect == "bn_no_stats":
            self.stem_bn = nn.BatchNorm1d(HIDDEN, track_running_stats=False)
        if defect == "dropout":
            self.drop = nn.Dropout(p=0.5)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.defect in ("bn", "bn_no_stats"):
            h = self.stem_bn(h)
        elif self.defect == "dropout":
            h = self.drop(h)
        elif self.defect == "noise":
            h = h + 0.1 * torch.randn_like(h)
        elif self.defect == "dropout_centering":
            # Functional dropout over a layer that mixes samples: the randomness hides the mixing.
            h = F.dropout(h - h.mean(dim=0, keepdim=True), 0.2, self.training)
        elif self.defect == "nan":
            h = h * float("nan")  # a loss that is nan from the start
        elif self.defect == "centering":
            # Mixes the samples of a batch: each sample's output depends on the others.
            h = h - h.mean(dim=0, keepdim=True)
        elif self.defect == "float32":
            h = h * torch.ones(HIDDEN, HIDDEN)[0]  # float32, whatever the model's dtype
            h = h @ torch.eye(HIDDEN)
        return self.head(torch.relu(h))


def _make_batch(n: int, generator: torch.Generator):
    return torch.randn(n, D_IN, generator=generator), torch.randint(0, CLASSES, (n,), generator=generator)


def _loss(output: torch.Tensor, batch) -> torch.Tensor:
    return F.cross_entropy(output.float(), batch[1])


def _workload(defect: str) -> Workload:
    return Workload(name=f"mlp-{defect}", build_model=lambda: MLP(defect), make_batch=_make_batch, loss=_loss,
                    description=f"test MLP with defect {defect!r}")


def bn_mlp() -> Workload:
    """MLP with a BatchNorm1d layer, `stem_bn`."""
    return _workload("bn")


def dropout_mlp() -> Workload:
    """MLP with dropout (p=0.5), `drop`."""
    return _workload("dropout")


def noisy_mlp() -> Workload:
    """MLP that adds noise in forward (functional randomness)."""
    return _workload("noise")


def centering_mlp() -> Workload:
    """MLP that centres each batch: not equivalent, for no reason the check knows."""
    return _workload("centering")


def float32_only_mlp() -> Workload:
    """MLP whose forward makes float32 tensors: fails in a float64 check."""
    return _workload("float32")


def dict_batch_mlp() -> Workload:
    """Plain MLP whose batches are dicts of tensors."""

    def make_batch(n: int, generator: torch.Generator):
        x, y = _make_batch(n, generator)
        return {"inputs": x, "targets": y, "note": "shared by every micro-batch"}

    return Workload(name="mlp-dict", build_model=lambda: MLP(""), make_batch=make_batch,
                    loss=lambda output, batch: F.cross_entropy(output, batch["targets"]))


def bn_no_stats_mlp() -> Workload:
    """MLP with a BatchNorm1d that keeps no running statistics: eval mode cannot switch it off."""
    return _workload("bn_no_stats")


def dropout_centering_mlp() -> Workload:
    """MLP whose functional dropout (training only) hides a layer that mixes samples."""
    return _workload("dropout_centering")


def nan_mlp() -> Workload:
    """MLP whose every output is nan: no gradient can be compared."""
    return _workload("nan")
