"""The cuda meter: the caching allocator's peak statistics and CUDA-event step times."""

from __future__ import annotations

import gc
import time
from typing import Any, Sequence

import torch

from accumbench.meters.base import Measurement, Meter, Step, check_counts, timed_steps
from accumbench.scenarios import TrainingState


class TorchCudaProbe:
    """The allocator statistics the meter reads, behind an object so tests can fake it."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def max_allocated(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def max_reserved(self) -> int:
        return torch.cuda.max_memory_reserved(self.device)


class CudaEventTimer:
    """Times each step with a pair of CUDA events; one synchronisation after the last step, so
    the host never waits between steps (as in training). `clock` (host) measures the adaptive
    timing's time cap."""

    clock = staticmethod(time.perf_counter)

    def time_steps(self, step: Step, steps: int) -> tuple[float, ...]:
        """Run `step` `steps` times; return each one's GPU duration in seconds."""
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(steps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
        return tuple(start.elapsed_time(end) / 1000.0 for start, end in events)


class CudaMeter(Meter):
    """Steady-state `max_memory_allocated` after warm-up, first-step peak, reserved peak."""

    name = "cuda"

    def __init__(self, probe: Any = None, timer: Any = None) -> None:
        self.probe = probe or TorchCudaProbe()
        self.timer = timer or CudaEventTimer()

    def measure(
        self, step: Step, state: TrainingState, batches: Sequence[Any], warmup: int, steps
    ) -> Measurement:
        check_counts(warmup, steps)
        probe = self.probe
        probe.synchronize()
        probe.reset_peak()
        step()
        probe.synchronize()
        first_peak = probe.max_allocated()
        for _ in range(warmup - 1):
            step()
        probe.synchronize()
        # Steady state: optimizer state exists, cuBLAS workspaces are allocated.
        baseline = probe.allocated()
        probe.reset_peak()
        # Adaptive timing synchronises once per chunk (chunks grow geometrically), so the host
        # still runs ahead of the GPU within a chunk as in training.
        times, stop_reason = timed_steps(self.timer, step, steps)
        probe.synchronize()
        return Measurement(
            peak_allocated=probe.max_allocated(),
            first_step_peak_allocated=first_peak,
            baseline_allocated=baseline,
            step_times_s=tuple(times),
            peak_reserved=probe.max_reserved(),
            stop_reason=stop_reason,
        )

    def trace(self, step: Step, state: TrainingState):
        """One more step with `memory_allocated()` sampled after every aten op and at every
        phase mark; the allocator's own peak of that step is kept beside the curve."""
        from torch.utils._python_dispatch import TorchDispatchMode

        from accumbench.timeline import Timeline, _Sampler, decimate

        sampler = _Sampler(read=self.probe.allocated)

        class _SampleEveryOp(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                sampler.values.append(sampler.read())
                return out

        previous_observer = state.observer
        state.observer = sampler
        self.probe.synchronize()
        self.probe.reset_peak()
        try:
            with _SampleEveryOp():
                sampler.values.append(sampler.read())
                step()
        finally:
            state.observer = previous_observer
        self.probe.synchronize()
        values, marks = decimate(sampler.values, sampler.marks)
        return Timeline(bytes=tuple(values), marks=tuple(marks), source="cuda-sampled",
                        allocator_peak=self.probe.max_allocated())

    def release(self, device: torch.device) -> None:
        """Collect garbage and return cached blocks: the next case starts from an empty cache."""
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()

    def device_info(self, device: torch.device) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(device)
        return {"device_name": props.name, "device_total_memory": int(props.total_memory)}
