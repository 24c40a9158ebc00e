"""Counting and timing DDP's gradient all-reduces with a communication hook."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from accumbench.meters.base import Meter, WallClockTimer


@dataclass(frozen=True)
class CommStats:
    """All-reduces of the timed steps: hook calls and seconds per optimizer step, bucket count."""

    allreduces_per_step: float
    buckets: int
    time_s_per_step: float
    timing: str


class AllReduceCounter:
    """State of a DDP communication hook that counts and times each bucket's all-reduce.

    Register with `model.register_comm_hook(counter, AllReduceCounter.hook)`; the hook does what
    DDP's default does (`allreduce_hook`: divide by the world size, all-reduce the sum).
    `reset()` starts a window; `stats(steps)` reads it (after a CUDA synchronize).
    """

    def __init__(self, group: Any, device_type: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self.group = group
        self.cuda = device_type == "cuda"
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget what was counted so far."""
        self.calls = 0
        self.bucket_ids: set[int] = set()
        self.buffers: dict[int, torch.Tensor] = {}  # each bucket's flat gradient buffer, by index
        self.wall_s = 0.0
        self._events: list[tuple[Any, Any]] = []

    @staticmethod
    def hook(state, bucket):  # no annotations: DDP rejects any but its own (dist.GradBucket)
        """The DDP comm hook: count, start the clock, all-reduce, stop the clock when done."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        state.calls += 1
        state.bucket_ids.add(bucket.index())
        state.buffers[bucket.index()] = bucket.buffer()
        if state.cuda:
            # Recorded on the compute stream when the bucket is ready; the callback runs with
            # streams that wait for the all-reduce, so `end` marks its completion on the GPU.
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            state._events.append((start, end))

            def done(fut: torch.futures.Future) -> torch.Tensor:
                end.record()
                return fut.value()
        else:
            started = state.clock()

            def done(fut: torch.futures.Future) -> torch.Tensor:
                state.wall_s += state.clock() - started
                return fut.value()

        return allreduce_hook(state.group, bucket).then(done)

    def seconds(self) -> float:
        """Seconds spent in all-reduces since `reset()` (synchronises on CUDA)."""
        if not self.cuda:
            return self.wall_s
        torch.cuda.synchronize()
        return sum(start.elapsed_time(end) for start, end in self._events) / 1000.0

    def stats(self, steps: int) -> CommStats:
        """Per-optimizer-step figures of the window since `reset()`."""
        return CommStats(
            allreduces_per_step=self.calls / steps,
            buckets=len(self.bucket_ids),
            time_s_per_step=self.seconds() / steps,
            timing="cuda-events" if self.cuda else "wall-clock",
        )


class CommWindowTimer:
    """Wraps a meter's step timer so the all-reduce counts cover exactly the timed steps (not
    the warm-up, nor the slower memory-tracked steps of the cpu meter)."""

    def __init__(self, inner: Any, counter: AllReduceCounter) -> None:
        self.inner = inner
        self.counter = counter
        self.stats: CommStats | None = None

    def time_steps(self, step: Callable[[], None], steps: int) -> tuple[float, ...]:
        """Time `steps` steps with the inner timer; keep their all-reduce stats in `.stats`."""
        self.counter.reset()
        times = self.inner.time_steps(step, steps)
        self.stats = self.counter.stats(steps)
        return times


def ddp_meter(device_type: str, counter: AllReduceCounter) -> tuple[Meter, CommWindowTimer]:
    """The device's meter (cuda or cpu), its step timer wrapped to count all-reduces."""
    if device_type == "cuda":
        from accumbench.meters.cuda import CudaEventTimer, CudaMeter

        window = CommWindowTimer(CudaEventTimer(), counter)
        return CudaMeter(timer=window), window
    from accumbench.meters.cpu import CpuMeter

    window = CommWindowTimer(WallClockTimer(), counter)
    return CpuMeter(timer=window), window
