"""What a meter returns, and the interface every meter (cuda, cpu, estimate) implements."""

from __future__ import annotations

import abc
import contextlib
import gc
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
import torch.utils._pytree as pytree

from accumbench.scenarios import TrainingState

if TYPE_CHECKING:
    from accumbench.meters.timing import StepPolicy
    from accumbench.timeline import Timeline

Step = Callable[[], None]


@dataclass(frozen=True)
class Measurement:
    """Raw numbers of one measured case: bytes and seconds, nothing derived.

    - `peak_allocated`: peak over the measured (steady-state) steps.
    - `first_step_peak_allocated`: peak of the very first step (optimizer state being created,
      workspaces allocated), often higher.
    - `baseline_allocated`: live bytes just before the measured steps.
    - `step_times_s`: one duration per measured optimizer step.
    """

    peak_allocated: int
    first_step_peak_allocated: int
    baseline_allocated: int
    step_times_s: tuple[float, ...]
    peak_reserved: int | None = None
    breakdown: dict[str, int] | None = None
    # What a prediction assumed (the estimate meter); None for measurements.
    assumptions: dict[str, Any] | None = None
    # FLOPs of one step, from meters that count them (`Meter.counts_flops`).
    flops_per_step: int | None = None
    # A predicted (not measured) step time, from the estimate meter's step-time model.
    predicted_step_time_s: float | None = None
    # Why timing stopped: 'ci-target', 'time-cap' (adaptive) or 'fixed' (a count); None when
    # nothing was timed (the estimate meter).
    stop_reason: str | None = None
    # The warm-up and measured steps a meter ran when they are not the case's (the estimate
    # meter's fake steps); None: the case's warm-up and the timed steps.
    warmup_steps: int | None = None
    measured_steps: int | None = None


class Meter(abc.ABC):
    """Measures a training step: warm-up, then steady-state peak memory and step times."""

    name: str = ""
    # True when `measure` fills `Measurement.flops_per_step` (the runner then adds no counter).
    counts_flops: bool = False

    @abc.abstractmethod
    def measure(
        self, step: Step, state: TrainingState, batches: Sequence[Any], warmup: int,
        steps: "int | StepPolicy",
    ) -> Measurement:
        """Run `warmup` then the timed calls of `step` and return what they cost.

        `steps` is a fixed count or a `StepPolicy` (adaptive: time until the median is known,
        see `accumbench.meters.timing`).

        `state` and `batches` let a meter see the tensors alive before the step (parameters,
        optimizer state, gradients, inputs). `warmup` is at least 1: the first step creates
        the optimizer state and is measured separately.
        """

    def trace(self, step: Step, state: TrainingState) -> "Timeline":
        """Run one more step and return its memory timeline (see `accumbench.timeline`)."""
        raise NotImplementedError(f"the {self.name} meter cannot trace a memory timeline")

    def case_context(self) -> contextlib.AbstractContextManager:
        """Context under which a case is built and measured (the estimate meter enters a fake
        tensor mode here); by default none."""
        return contextlib.nullcontext()

    def build_model(self, workload: Any, device: torch.device) -> torch.nn.Module:
        """The workload's model on `device`; the estimate meter builds it on fake tensors."""
        return workload.build_model().to(device)

    def release(self, device: torch.device) -> None:
        """Free what a finished (or failed) case left, so it does not pile up over a suite. A
        young-generation collection: the tracker meters count only a case's own allocations, so
        an older case's garbage never enters a peak, and a full collection took 0.14 s a case in
        the test process on 2 cores (the cuda meter collects in full: its allocator counts all)."""
        gc.collect(1)

    def device_info(self, device: torch.device) -> dict[str, Any]:
        """`device_name` and `device_total_memory` (bytes, or None) for the records."""
        return {"device_name": device.type, "device_total_memory": None}


# Why a model with lazy modules is refused, by every meter: their parameters do not exist until a
# first forward, and fake tensors cannot be materialised by one.
LAZY_MODULES = ("the model has lazy modules (nn.LazyLinear, ...) whose parameters do not exist until a "
                "first forward; give them their input sizes (nn.Linear(in, out)) in build_model")


def flat_tensors(obj: Any) -> Iterable[torch.Tensor]:
    """Every tensor inside nested tuples, lists and dicts, in order."""
    return [leaf for leaf in pytree.tree_leaves(obj) if isinstance(leaf, torch.Tensor)]


# nn.Module's own dicts of parameters, buffers and submodules (counted as such, not as "other").
_MODULE_REGISTRIES = ("_parameters", "_buffers", "_modules")


def live_tensors(state: TrainingState) -> dict[str, list[torch.Tensor]]:
    """The device tensors alive between steps, by breakdown category. The host micro-batches
    are not among them: each micro-step copies its own to the device."""
    params = list(state.model.parameters()) + list(state.model.buffers())
    grads = [p.grad for p in state.model.parameters() if p.grad is not None]
    optimizer_state = [
        t for per_param in state.optimizer.state.values() for t in flat_tensors(per_param)
    ]
    alive = {"params": params, "grads": grads, "optimizer": optimizer_state}
    # DDP's gradient buckets; the fp16 GradScaler's scale and growth tracker; tensors a module
    # keeps as plain attributes, alone or in lists and dicts (a cache its forward replaces each
    # step, a memory bank of past activations). The cpu meter's own tracker has counted those
    # made in the warm-up since then; a fresh tracker must adopt them.
    scaler = state.scaler
    other = list(state.held_buffers) + [
        t for t in (getattr(scaler, "_scale", None), getattr(scaler, "_growth_tracker", None))
        if isinstance(t, torch.Tensor)]
    kept = [value for module in state.model.modules() for name, value in vars(module).items()
            if name not in _MODULE_REGISTRIES and isinstance(value, (torch.Tensor, list, tuple, dict))]
    other += [t for t in flat_tensors(kept) if not isinstance(t, torch.nn.Parameter)]
    if other:
        alive["other"] = other
    return alive


def trace_with_tracker(step: Step, state: TrainingState, device_type: str,
                       size_of: Callable[[int], int],
                       alive: dict[str, list[torch.Tensor]] | None = None) -> "Timeline":
    """One step under a recording `LiveBytesTracker`: the same counter the cpu and estimate
    meters measure with, so the curve's maximum is their steady-state peak to the byte.
    `alive`: what lives between steps, by category (default `live_tensors(state)`)."""
    from accumbench.meters.tracker import LiveBytesTracker
    from accumbench.timeline import Timeline, decimate

    tracker = LiveBytesTracker(device_type, size_of=size_of, record=True)
    tracker.adopt(live_tensors(state) if alive is None else alive)
    tracker.events[:] = [tracker.current]  # the curve starts at what lives between steps
    tracker.reset_peak()
    previous_observer = state.observer
    state.observer = tracker
    try:
        with tracker:
            tracker.watch_gradients(state.model.parameters())
            step()
    finally:
        state.observer = previous_observer
    values, marks = decimate(tracker.events, tracker.marks)
    return Timeline(bytes=tuple(values), marks=tuple(marks), source="tracker",
                    peak_breakdown=dict(tracker.peak_breakdown))


class WallClockTimer:
    """Times each call with a host clock (injectable, so tests can use a fake one)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock

    def time_steps(self, step: Step, steps: int) -> tuple[float, ...]:
        """Run `step` `steps` times; return each call's duration in seconds."""
        times = []
        for _ in range(steps):
            start = self.clock()
            step()
            times.append(self.clock() - start)
        return tuple(times)


def check_counts(warmup: int, steps: "int | StepPolicy") -> None:
    """Reject counts that would measure nothing or skip the optimizer-state step."""
    from accumbench.meters.timing import as_policy

    if warmup < 1:
        raise ValueError("warmup must be at least 1: the first step creates the optimizer state")
    if not isinstance(steps, int) or steps >= 1:
        as_policy(steps)
    else:
        raise ValueError("steps must be at least 1")


def timed_steps(timer: Any, step: Step, steps: "int | StepPolicy") -> tuple[tuple[float, ...], str]:
    """Time `step` with `timer` (a `time_steps(step, n)` object) as `steps` says: a fixed count
    or adaptively; returns (step times, stop reason)."""
    from accumbench.meters.timing import as_policy, time_with_policy

    return time_with_policy(lambda n: timer.time_steps(step, n), as_policy(steps))
