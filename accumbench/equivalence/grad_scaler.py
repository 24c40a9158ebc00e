"""The GradScaler and the accumulation window, shown on the workload itself.

A GradScaler multiplies each micro-batch's loss by its current scale before backward; the
summed gradients are divided by the scale once, at `scaler.step()`. That is exact only if the
scale stays the same for the whole window. accumbench's fp16 path (`TrainingState.optimizer_step`)
calls `scaler.update()` once per optimizer step, after the window, so it does. A loop that
changes the scale between micro-batches (an `update()` inside the window) divides gradients
made at different scales by the last one: the early micro-batches count too much or too little.

The demonstration runs the real accumulated step with a GradScaler twice: as accumbench runs it,
and with the scale doubled before every micro-batch after the first (what a growth step inside
the window does). No autocast is needed: the arithmetic of the scale is the same in any dtype.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from accumbench.equivalence.gradients import compare_tensors, step_gradients
from accumbench.workloads.base import Workload

INIT_SCALE = 2.0**16  # a power of two: scaling and unscaling are exact


class _ScaleChangeInsideWindow:
    """Phase observer that doubles the scaler's scale before each micro-batch but the first."""

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.scaler = scaler

    def phase(self, name: str, micro_step: int | None) -> None:
        if name == "forward" and micro_step:
            self.scaler.update(new_scale=self.scaler.get_scale() * 2.0)


def grad_scaler_errors(
    workload: Workload,
    model: nn.Module,
    micro_batches: Sequence[Any],
    weights: Sequence[float],
    loss_norm: str,
    reference: dict[str, torch.Tensor],
    seed: int = 0,
) -> dict[str, float]:
    """Relative gradient error against `reference` (the same accumulated step's gradients
    without a scaler, drawn with `seed`) of the accumulated step under a GradScaler: `scale_once_per_window` (accumbench's fp16 path) and
    `scale_changed_inside_window` (the scale doubled between micro-batches)."""
    errors = {}
    for key, change in (("scale_once_per_window", False), ("scale_changed_inside_window", True)):
        device = next(iter(model.parameters())).device
        scaler = torch.amp.GradScaler(device.type, init_scale=INIT_SCALE)
        observer = _ScaleChangeInsideWindow(scaler) if change else None
        torch.manual_seed(seed)
        grads = step_gradients(workload, copy.deepcopy(model), micro_batches, weights, loss_norm,
                               scaler=scaler, observer=observer)
        errors[key] = compare_tensors(grads, reference).rel_error
    return errors
