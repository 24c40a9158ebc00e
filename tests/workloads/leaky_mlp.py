"""Plug-in workloads for the regression-gate tests: one MLP and two ways to make it worse.

All three factories give the workload the same name, so `accumbench run` gives their cases the
same `case_id` and `accumbench compare` matches them as "the same case, after a change":

- `mlp_plain`: the reference.
- `mlp_leaky`: a memory regression as it happens in real code: the model stashes a copy of an
  activation on itself (for "debugging"), so one more tensor stays alive across the step.
- `mlp_slow`: a throughput regression: extra matmuls in forward whose results are thrown away.
  They run under no_grad on a small operand, so the step's peak memory does not change.

Used as `--workload tests/workloads/leaky_mlp.py:mlp_leaky`.
"""

from __future__ import annotations

import torch
from torch import nn

from accumbench.workloads.base import Workload

NAME = "gate-mlp"
D_IN, HIDDEN, CLASSES = 64, 128, 10
EXTRA_MATMULS = 16


class MLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear, with the two optional defects."""

    def __init__(self, leak: bool = False, extra_matmuls: int = 0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D_IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.head = nn.Linear(HIDDEN, CLASSES)
        self.leak = leak
        self.extra_matmuls = extra_matmuls
        self.stash: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        if self.leak:
            # The defect: a copy kept on the module outlives the step (and the next step holds
            # two while it replaces it).
            self.stash = h.detach().clone()
        if self.extra_matmuls:
            # The defect: wasted work. One weight-sized product per iteration, reused in place,
            # so time grows and memory does not.
            with torch.no_grad():
                w = self.fc2.weight
                scratch = torch.empty_like(w)
                for _ in range(self.extra_matmuls):
                    torch.mm(w, w, out=scratch)
                del scratch
        h = torch.relu(self.fc2(h))
        return self.head(h)


def _make_batch(n: int, generator: torch.Generator):
    x = torch.randn(n, D_IN, generator=generator)
    y = torch.randint(0, CLASSES, (n,), generator=generator)
    return x, y


def _loss(output: torch.Tensor, batch) -> torch.Tensor:
    return nn.functional.cross_entropy(output, batch[1])


def _workload(leak: bool = False, extra_matmuls: int = 0) -> Workload:
    return Workload(
        name=NAME,
        build_model=lambda: MLP(leak=leak, extra_matmuls=extra_matmuls),
        make_batch=_make_batch,
        loss=_loss,
        description="test MLP for the regression gate",
    )


def mlp_plain() -> Workload:
    """The reference MLP."""
    return _workload()


def mlp_leaky() -> Workload:
    """The MLP that keeps a copy of an activation alive: more peak memory, same speed."""
    return _workload(leak=True)


def mlp_slow() -> Workload:
    """The MLP that does extra matmuls: slower, same peak memory."""
    return _workload(extra_matmuls=EXTRA_MATMULS)
