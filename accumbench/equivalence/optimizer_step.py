"""Does the optimizer step land in the same place? Parameters after the large batch's step vs
after the accumulated run's step, for plain SGD, SGD with momentum and AdamW.

The error reported is that of the update, ‖Δ_acc − Δ_large‖ / ‖Δ_large‖ with Δ = p_after −
p_before: the parameters themselves dwarf one step's change and would hide any difference.
AdamW normalises its update per element (the first step is about lr·sign(g)), so its error is
not the gradient's: elements whose gradient is near zero can flip sign, others barely move.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from accumbench.equivalence.gradients import ACCUMULATED_SEED_OFFSET, compare_tensors, run_step
from accumbench.workloads.base import Workload


@dataclass(frozen=True)
class OptimizerCheck:
    """An optimizer to step with, and how many steps (momentum needs two to matter: on the
    first step its buffer is just the gradient)."""

    build: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    steps: int = 1
    label: str = ""


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1, foreach=True)


def _sgd_momentum(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True)


def _adamw(params):
    # No weight decay: it is the same in both runs and would only dilute the difference.
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, foreach=True)


# A literal registry: name -> the optimizer the step is checked with.
OPTIMIZER_CHECKS: dict[str, OptimizerCheck] = {
    "sgd": OptimizerCheck(_sgd, 1, "SGD(foreach, lr=0.1), 1 step"),
    "sgd-momentum": OptimizerCheck(_sgd_momentum, 2, "SGD(foreach, lr=0.1, momentum=0.9), 2 steps"),
    "adamw": OptimizerCheck(_adamw, 1, "AdamW(foreach, lr=1e-3, weight_decay=0), 1 step"),
}
CHECK_OPTIMIZER_LABEL = "SGD,AdamW(foreach)"


def _updated_parameters(workload: Workload, model: nn.Module, check: OptimizerCheck,
                        micro_batches: Sequence[Any], weights: Sequence[float], loss_norm: str,
                        seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # reproducible random draws (dropout)
    optimizer = check.build(model.parameters())
    for _ in range(check.steps):
        run_step(workload, model, optimizer, micro_batches, weights, loss_norm)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def update_errors(
    workload: Workload,
    model: nn.Module,
    large_batch: Any,
    micro_batches: Sequence[Any],
    weights_by_norm: Mapping[str, Sequence[float]],
    seed: int = 0,
    checks: Mapping[str, OptimizerCheck] | None = None,
) -> dict[str, dict[str, float]]:
    """Relative error of the accumulated run's parameter update against the large batch's, per
    loss normalisation (its micro-batch weights in `weights_by_norm`) and per optimizer in
    `checks` (default `OPTIMIZER_CHECKS`), from copies of `model`, which is left unchanged.
    Returns {loss_norm: {optimizer: error}}."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    errors: dict[str, dict[str, float]] = {norm: {} for norm in weights_by_norm}
    for name, check in (checks or OPTIMIZER_CHECKS).items():
        # The large batch's step does not depend on how micro-batch losses are weighted.
        large = _updated_parameters(workload, copy.deepcopy(model), check, [large_batch], [1.0], "mean", seed)
        delta_large = {k: large[k] - before[k] for k in before}
        for norm, weights in weights_by_norm.items():
            accumulated = _updated_parameters(workload, copy.deepcopy(model), check, micro_batches, weights,
                                              norm, seed + ACCUMULATED_SEED_OFFSET)
            delta_accumulated = {k: accumulated[k] - before[k] for k in before}
            errors[norm][name] = compare_tensors(delta_accumulated, delta_large).rel_error
    return errors
