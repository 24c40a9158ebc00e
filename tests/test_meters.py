"""Meters with injected clocks and memory probes: the measurement logic, no GPU needed."""

from __future__ import annotations

import itertools

import pytest
import torch

from accumbench.meters import CpuMeter, LiveBytesTracker, WallClockTimer, cuda_allocator_bytes
from accumbench.meters.cuda import CudaMeter
from accumbench.runner import prepare_case
from accumbench.cases import Case
from accumbench.workloads import load_workload


class FakeProbe:
    """Allocator statistics driven by the fake step: each call allocates then frees."""

    def __init__(self):
        self.allocated_now = 1000
        self.max_seen = 1000
        self.log = []

    def synchronize(self):
        self.log.append("sync")

    def reset_peak(self):
        self.log.append("reset")
        self.max_seen = self.allocated_now

    def allocated(self):
        return self.allocated_now

    def max_allocated(self):
        return self.max_seen

    def max_reserved(self):
        return self.max_seen + 512


class FakeTimer:
    def __init__(self, times):
        self.times = times

    def time_steps(self, step, steps):
        for _ in range(steps):
            step()
        return tuple(self.times[:steps])


def test_cuda_meter_separates_first_step_from_steady_state():
    probe = FakeProbe()
    calls = itertools.count()

    def step():
        n = next(calls)
        # The first step also creates 300 bytes of optimizer state and peaks higher.
        transient = 900 if n == 0 else 500
        probe.max_seen = max(probe.max_seen, probe.allocated_now + transient)
        if n == 0:
            probe.allocated_now += 300

    meter = CudaMeter(probe=probe, timer=FakeTimer([0.2, 0.1, 0.3]))
    m = meter.measure(step, state=None, batches=[], warmup=2, steps=3)
    assert m.first_step_peak_allocated == 1900
    assert m.baseline_allocated == 1300
    assert m.peak_allocated == 1800
    assert m.peak_reserved == 2312
    assert m.step_times_s == (0.2, 0.1, 0.3)
    assert next(calls) == 5  # 2 warm-up + 3 measured
    assert probe.log[:2] == ["sync", "reset"]


def test_meters_reject_counts_that_measure_nothing():
    with pytest.raises(ValueError, match="warmup"):
        CudaMeter(probe=FakeProbe(), timer=FakeTimer([])).measure(lambda: None, None, [], 0, 1)
    with pytest.raises(ValueError, match="steps"):
        CudaMeter(probe=FakeProbe(), timer=FakeTimer([])).measure(lambda: None, None, [], 1, 0)


def test_wall_clock_timer_uses_the_injected_clock():
    ticks = iter([0.0, 0.5, 1.0, 1.25])
    timer = WallClockTimer(clock=lambda: next(ticks))
    assert timer.time_steps(lambda: None, 2) == (0.5, 0.25)


def test_cpu_meter_times_with_its_timer_and_tracks_memory():
    workload = load_workload("mlp", {"size": "tiny"})
    prepared = prepare_case(Case("mlp", "large-batch", 4, 1, (("size", "tiny"),)), workload, torch.device("cpu"))
    meter = CpuMeter(timer=FakeTimer([0.01, 0.02]))
    m = meter.measure(prepared.step, prepared.state, prepared.batches, warmup=2, steps=2)
    assert m.step_times_s == (0.01, 0.02)
    assert m.peak_allocated > m.baseline_allocated > 0
    assert sum(m.breakdown.values()) == m.peak_allocated


def test_tracker_counts_storages_once_and_releases_them():
    tracker = LiveBytesTracker("cpu")
    with tracker:
        a = torch.ones(256)  # 1024 bytes
        view = a[:10]  # same storage: not counted again
        b = a * 2  # new storage
        assert tracker.current == 2048
        del a
        assert tracker.current == 2048  # the view keeps a's storage alive
        del view
        assert tracker.current == 1024
        del b
        assert tracker.current == 0
    assert tracker.peak == 2048


def test_tracker_frees_when_the_last_reference_goes():
    tracker = LiveBytesTracker("cpu")
    with tracker:
        a = torch.ones(256)
        b = torch.ones(256)
        del a
        assert tracker.current == 1024
        del b
        assert tracker.current == 0
    assert tracker.peak == 2048


def test_a_sparse_gradient_is_refused_in_one_line_naming_its_source():
    from accumbench.meters.tracker import UnsupportedLayout

    embedding = torch.nn.Embedding(10, 4, sparse=True)
    tracker = LiveBytesTracker("cpu")
    with pytest.raises(UnsupportedLayout, match=r"^sparse_coo tensors are not supported: .*Embedding\(sparse=True\)"):
        with tracker:
            tracker.watch_gradients(embedding.parameters())
            embedding(torch.tensor([1, 2])).sum().backward()


def test_allocator_rounding():
    assert cuda_allocator_bytes(0) == 0
    assert cuda_allocator_bytes(1) == 512
    assert cuda_allocator_bytes(512) == 512
    assert cuda_allocator_bytes(513) == 1024


def test_cuda_trace_samples_the_probe_after_every_op_and_at_every_phase():
    """The CUDA timeline's plumbing, with a fake allocator probe on CPU tensors."""
    workload = load_workload("mlp", {"size": "tiny"})
    prepared = prepare_case(Case("mlp", "accumulated", 4, 2, (("size", "tiny"),)), workload, torch.device("cpu"))
    prepared.step()  # optimizer state exists, as after the measured steps
    reads = itertools.count()

    class CountingProbe(FakeProbe):
        def allocated(self):  # a different value at each read: every sample is visible
            return next(reads)

        def max_allocated(self):
            return 12345

    timeline = CudaMeter(probe=CountingProbe(), timer=FakeTimer([])).trace(prepared.step, prepared.state)
    assert timeline.source == "cuda-sampled" and timeline.allocator_peak == 12345
    assert list(timeline.bytes) == list(range(len(timeline.bytes)))  # one sample per read, in order
    phases = [phase for _, phase, _ in timeline.marks]
    assert phases == ["forward", "backward", "forward", "backward", "optimizer", "zero_grad", "end"]
    assert len(timeline.bytes) > 50  # sampled after every aten op, not only at the marks
    assert prepared.state.observer.__class__.__name__ == "_NoObserver"  # restored afterwards
