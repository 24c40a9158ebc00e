"""Gradients of one optimizer step, taken through accumbench's own scenario steps.

The check runs the same `large_batch_step` / `accumulated_step` (or `multitask_combined_step`)
that `accumbench run` benchmarks, with an "optimizer" whose `step()` copies the gradients
instead of applying them, so what is checked is exactly what is measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from accumbench.scenarios import SCENARIOS, PhaseObserver, StepOptions, TrainingState
from accumbench.workloads.base import Workload

# The accumulated run draws its random numbers (dropout masks) from another seed than the large
# batch, as two training runs would. With one seed, the CPU generator would draw the same masks
# for the N micro-batches as for the large batch (sequential draws concatenate), hiding what
# randomness does to the comparison.
ACCUMULATED_SEED_OFFSET = 1


class GradientCapture(torch.optim.Optimizer):
    """An optimizer whose `step()` copies every parameter's gradient (zeros where it has none)
    and changes nothing, so a scenario step can be run to read its summed gradients."""

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        super().__init__(params, defaults={})
        self.captured: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:
        """Copy the gradients as they are when the scenario steps (after the whole window)."""
        self.captured = [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for group in self.param_groups for p in group["params"]
        ]


def step_scenarios(workload: Workload) -> tuple[str, str]:
    """The (large-batch, accumulated) scenario names for a workload. A multi-task workload sums
    its task losses (`multitask-combined`; with one micro-batch it is the large batch)."""
    if workload.is_multitask:
        return "multitask-combined", "multitask-combined"
    return "large-batch", "accumulated"


def run_step(
    workload: Workload,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Any],
    weights: Sequence[float],
    loss_norm: str = "mean",
    scaler: Any = None,
    observer: PhaseObserver | None = None,
) -> TrainingState:
    """One optimizer step of the workload's scenario: the large batch for one micro-batch, the
    accumulated loop for several. Returns the state (its model holds the updated buffers)."""
    large, accumulated = step_scenarios(workload)
    scenario = large if len(micro_batches) == 1 else accumulated
    device = next(iter(model.parameters())).device
    state = TrainingState(model, optimizer, workload, StepOptions(loss_norm=loss_norm), device, scaler)
    if observer is not None:
        state.observer = observer
    SCENARIOS[scenario](state, list(micro_batches), list(weights))
    return state


def step_gradients(
    workload: Workload,
    model: nn.Module,
    micro_batches: Sequence[Any],
    weights: Sequence[float],
    loss_norm: str = "mean",
    scaler: Any = None,
    observer: PhaseObserver | None = None,
) -> dict[str, torch.Tensor]:
    """The gradients one scenario step hands to `optimizer.step()`, by parameter name (tied
    parameters appear once, under their first name)."""
    capture = GradientCapture(model.parameters())
    run_step(workload, model, capture, micro_batches, weights, loss_norm, scaler, observer)
    if capture.captured is None:
        # A GradScaler that found inf/nan skips the step: there is nothing to compare.
        raise RuntimeError("the optimizer step was skipped (the GradScaler found inf/nan gradients)")
    names = [name for name, _ in model.named_parameters()]
    return dict(zip(names, capture.captured))


def _norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach().double()))


def relative_error(value: float, reference: float) -> float:
    """`value / reference`, 0 when both are 0, inf when only the reference is."""
    if reference > 0:
        return value / reference
    return 0.0 if value == 0 else math.inf


@dataclass(frozen=True)
class GradientComparison:
    """How far one set of tensors is from a reference set: ‖a − ref‖ / ‖ref‖ over all of them
    together, and per tensor, worst first."""

    rel_error: float
    per_tensor: tuple[tuple[str, float], ...]

    def worst(self, k: int) -> list[tuple[str, float]]:
        """The `k` tensors with the largest relative error."""
        return list(self.per_tensor[:k])


# A tensor's reference gradient norm below this fraction of the whole gradient's is taken as zero
# when naming the worst tensors (far above float64 rounding, far below any gradient that trains).
NEGLIGIBLE_GRADIENT = 1e-9


def compare_tensors(values: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> GradientComparison:
    """Compare two name -> tensor maps with the same names (norms taken in float64)."""
    if set(values) != set(reference):
        raise ValueError(f"different tensors to compare: {sorted(set(values) ^ set(reference))}")
    diff_sq = ref_sq = 0.0
    norms: list[tuple[str, float, float]] = []
    for name, ref in reference.items():
        diff = _norm(values[name].double() - ref.double())
        size = _norm(ref)
        diff_sq += diff**2
        ref_sq += size**2
        norms.append((name, diff, size))
    # A tensor whose gradient and difference are both (next to) zero, a frozen one or an attention
    # key's bias (softmax ignores a shift), has a relative error of rounding noise: listed last,
    # not worst. A zero gradient that should not be zero still is.
    negligible = NEGLIGIBLE_GRADIENT * math.sqrt(ref_sq)
    counts = {name: max(diff, size) > negligible for name, diff, size in norms}
    per = [(name, relative_error(diff, size)) for name, diff, size in norms]
    per.sort(key=lambda item: (counts[item[0]], item[1]), reverse=True)
    return GradientComparison(relative_error(math.sqrt(diff_sq), math.sqrt(ref_sq)), tuple(per))
