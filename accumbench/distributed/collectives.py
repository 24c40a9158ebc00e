"""Counting and timing FSDP2's all-gathers and reduce-scatters.

FSDP2 lets a user swap its collectives (`FSDPModule.set_custom_all_gather` /
`set_custom_reduce_scatter`); the counting ones here subclass torch's defaults, so they allocate
and communicate exactly as FSDP2 does by default, and only count the calls, their bytes (the
all-gather's output, the reduce-scatter's input: what crosses the wire for the whole group) and
their time (from the call to the work's completion: wall clock on the CPU, CUDA events on CUDA).
No dispatch mode is involved, so the timed steps run at full speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter

ALL_GATHER, REDUCE_SCATTER = "all_gather", "reduce_scatter"


@dataclass(frozen=True)
class CollectiveStats:
    """FSDP collectives of the timed steps, per optimizer step, and the number of FSDP units."""

    allgathers_per_step: float
    allgather_bytes_per_step: float
    allgather_time_s_per_step: float
    reducescatters_per_step: float
    reducescatter_bytes_per_step: float
    reducescatter_time_s_per_step: float
    units: int
    timing: str


@dataclass
class _Tally:
    calls: int = 0
    nbytes: int = 0
    wall_s: float = 0.0
    events: list = field(default_factory=list)


class CollectiveCounter:
    """Counts and times the all-gathers and reduce-scatters of the FSDP units it is installed
    on (`install(model)`). `reset()` starts a window; `stats(steps)` reads it. The same
    interface as `AllReduceCounter`, so `CommWindowTimer` and `ddp_meter` take it as they are."""

    def __init__(self, device_type: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self.cuda = device_type == "cuda"
        self.clock = clock
        self.units = 0
        self.reset()

    def reset(self) -> None:
        """Forget what was counted so far."""
        self.tallies = {ALL_GATHER: _Tally(), REDUCE_SCATTER: _Tally()}

    def install(self, model: torch.nn.Module) -> int:
        """Put the counting collectives on every FSDP unit of `model`; return how many units."""
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.set_custom_all_gather(_CountingAllGather(self))
            unit.set_custom_reduce_scatter(_CountingReduceScatter(self))
        self.units = len(units)
        return self.units

    def called(self, kind: str, nbytes: int, launch: Callable[[], Any]) -> Any:
        """Count one collective of `nbytes`, run it (`launch`) and time it to completion."""
        tally = self.tallies[kind]
        tally.calls += 1
        tally.nbytes += nbytes
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work = launch()
            tally.events.append((start, end))
            if work is None:
                end.record()
            else:
                # The callback runs with streams that wait for the collective, so `end` marks its
                # completion on the GPU.
                work.get_future().then(lambda _fut: end.record())
            return work
        started = self.clock()
        work = launch()
        if work is None:
            tally.wall_s += self.clock() - started
        else:
            def done(_fut: Any) -> None:
                tally.wall_s += self.clock() - started
            future = _future_of(work)
            if future is None:  # a backend without futures (the fake one): time the launch only
                tally.wall_s += self.clock() - started
            else:
                future.then(done)
        return work

    def seconds(self, kind: str) -> float:
        """Seconds spent in `kind` collectives since `reset()` (synchronises on CUDA)."""
        tally = self.tallies[kind]
        if not self.cuda:
            return tally.wall_s
        torch.cuda.synchronize()
        return sum(start.elapsed_time(end) for start, end in tally.events) / 1000.0

    def stats(self, steps: int) -> CollectiveStats:
        """Per-optimizer-step figures of the window since `reset()`."""
        gather, scatter = self.tallies[ALL_GATHER], self.tallies[REDUCE_SCATTER]
        return CollectiveStats(
            allgathers_per_step=gather.calls / steps,
            allgather_bytes_per_step=gather.nbytes / steps,
            allgather_time_s_per_step=self.seconds(ALL_GATHER) / steps,
            reducescatters_per_step=scatter.calls / steps,
            reducescatter_bytes_per_step=scatter.nbytes / steps,
            reducescatter_time_s_per_step=self.seconds(REDUCE_SCATTER) / steps,
            units=self.units,
            timing="cuda-events" if self.cuda else "wall-clock",
        )


def _future_of(work: Any) -> Any:
    try:
        return work.get_future()
    except Exception:  # some backends' works have none
        return None


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class _CountingAllGather(DefaultAllGather):
    """torch's default all-gather, counted."""

    def __init__(self, counter: CollectiveCounter) -> None:
        super().__init__()
        self.counter = counter

    def __call__(self, output_tensor, input_tensor, group, async_op: bool = False):
        return self.counter.called(ALL_GATHER, _nbytes(output_tensor),
                                   lambda: super(_CountingAllGather, self).__call__(
                                       output_tensor, input_tensor, group, async_op))


class _CountingReduceScatter(DefaultReduceScatter):
    """torch's default reduce-scatter, counted."""

    def __init__(self, counter: CollectiveCounter) -> None:
        super().__init__()
        self.counter = counter

    def __call__(self, output_tensor, input_tensor, group, op, async_op: bool = False):
        return self.counter.called(REDUCE_SCATTER, _nbytes(input_tensor),
                                   lambda: super(_CountingReduceScatter, self).__call__(
                                       output_tensor, input_tensor, group, op, async_op))


__all__ = ["ALL_GATHER", "REDUCE_SCATTER", "CollectiveCounter", "CollectiveStats"]
