"""The cpu meter: deterministic peak of live tensor bytes, wall-clock step times."""

from __future__ import annotations

import platform
from typing import Any, Sequence

import torch

from accumbench.meters.base import (
    Measurement,
    Meter,
    Step,
    WallClockTimer,
    check_counts,
    timed_steps,
    live_tensors,
    trace_with_tracker,
)
from accumbench.meters.tracker import LiveBytesTracker, exact_bytes
from accumbench.scenarios import TrainingState


# Steady steps run tracked after the warm-up: the cpu meter's peak is theirs.
MEMORY_STEPS = 1


class CpuMeter(Meter):
    """Peak memory from `LiveBytesTracker`, step times from a host clock.

    The tracker's Python dispatch slows every op, so memory and time come from different
    steps: warm-up and one steady-state step run tracked (memory), then the timed steps run
    untracked (a fixed count, or adaptively until the median is known); a compiled model's
    timed steps run first, since under the tracker it falls back to eager. In steady state no
    storage outlives a step that was not born in a tracked one, so nothing is missed.
    """

    name = "cpu"

    def __init__(self, timer: WallClockTimer | None = None, memory_steps: int = MEMORY_STEPS) -> None:
        self.timer = timer or WallClockTimer()
        self.memory_steps = memory_steps

    def measure(
        self, step: Step, state: TrainingState, batches: Sequence[Any], warmup: int, steps
    ) -> Measurement:
        check_counts(warmup, steps)
        # A compiled model runs eagerly under the tracker (a dispatch mode), and from then on:
        # its steps are timed first, after the compile step its lever ran (levers.measure_compiled).
        compiled = isinstance(state.model, torch._dynamo.eval_frame.OptimizedModule)
        if compiled:
            times, stop_reason = timed_steps(self.timer, step, steps)
        tracker = LiveBytesTracker("cpu")
        tracker.adopt(live_tensors(state))
        previous_observer = state.observer
        state.observer = tracker
        try:
            with tracker:
                tracker.watch_gradients(state.model.parameters())
                tracker.reset_peak()
                step()
                first_peak = tracker.peak
                for _ in range(warmup - 1):
                    step()
                baseline = tracker.current
                tracker.reset_peak()
                for _ in range(self.memory_steps):
                    step()
                peak, breakdown = tracker.peak, dict(tracker.peak_breakdown)
        finally:
            state.observer = previous_observer
        if not compiled:
            times, stop_reason = timed_steps(self.timer, step, steps)
        return Measurement(
            peak_allocated=peak,
            first_step_peak_allocated=first_peak,
            baseline_allocated=baseline,
            step_times_s=times,
            breakdown=breakdown,
            stop_reason=stop_reason,
        )

    def trace(self, step: Step, state: TrainingState):
        """The live-bytes curve of one more step, from the same tracker as the measurement."""
        return trace_with_tracker(step, state, "cpu", exact_bytes)

    def device_info(self, device: torch.device) -> dict[str, Any]:
        return {"device_name": f"cpu ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)",
                "device_total_memory": None}
