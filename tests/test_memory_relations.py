"""The memory relations accumulation is sold on, proven on CPU with the deterministic tracker.

Every number here is live tensor-storage bytes from `LiveBytesTracker`, which repeats to the
byte, so the relations are asserted exactly where the arithmetic allows.
"""

from __future__ import annotations

import pytest
import torch

from accumbench.cases import Case
from accumbench.meters.tracker import LiveBytesTracker
from accumbench.runner import Runner
from accumbench.workloads import load_workload

TINY = (("size", "tiny"),)


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(torch.device("cpu"))


def peak(runner: Runner, workload: str, scenario: str, micro: int, accum: int = 1, **knobs) -> int:
    record = runner.measure(Case(workload, scenario, micro, accum, TINY, warmup=2, steps=1, **knobs))
    assert record.status == "ok", record.error
    return record.peak_allocated


def param_bytes(workload: str) -> int:
    model = load_workload(workload, dict(TINY)).build_model()
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_large_batch_peak_grows_linearly_with_batch(runner):
    peaks = [peak(runner, "gpt", "large-batch", b) for b in (8, 16, 24, 32)]
    steps = [b - a for a, b in zip(peaks, peaks[1:])]
    assert steps[0] > 0
    # Activations scale exactly with the batch: equal increments, to the byte.
    assert steps == [steps[0]] * 3


def test_accumulated_peak_is_independent_of_accumulation_steps(runner):
    peaks = {n: peak(runner, "gpt", "accumulated", 8, n) for n in (2, 4, 8)}
    assert peaks[2] == peaks[4] == peaks[8]


def test_accumulated_peak_is_micro_batch_peak_plus_persisting_gradients(runner):
    large = peak(runner, "gpt", "large-batch", 8)
    accumulated = peak(runner, "gpt", "accumulated", 8, 4)
    # The peak is where backward starts, activations all alive. From the second micro-step on,
    # the gradients of the first (one fp32 copy of the parameters) persist under it: that, and
    # nothing else, is what accumulation adds.
    assert accumulated - large == param_bytes("gpt")


def test_accumulation_beats_the_large_batch_of_the_same_effective_size(runner):
    assert peak(runner, "gpt", "accumulated", 8, 4) < peak(runner, "gpt", "large-batch", 32)


@pytest.mark.slow  # a few seconds on 2 cores: .ci/run's slow step runs it
def test_sequential_backward_of_separate_models_needs_less_than_combined(runner):
    for accum in (1, 2):
        combined = peak(runner, "two-models", "multitask-combined", 8, accum)
        sequential = peak(runner, "two-models", "multitask-sequential", 8, accum)
        assert sequential < combined


def test_shared_trunk_sequential_saves_nothing(runner):
    combined = peak(runner, "shared-trunk", "multitask-combined", 8, 1)
    sequential = peak(runner, "shared-trunk", "multitask-sequential", 8, 1)
    # retain_graph keeps the trunk's graph through both backward calls.
    assert sequential >= combined


def test_same_case_measured_twice_gives_the_same_bytes(runner):
    case = Case("two-models", "multitask-sequential", 4, 2, TINY, warmup=2, steps=1)
    first, second = runner.measure(case), runner.measure(case)
    assert (first.peak_allocated, first.first_step_peak_allocated, first.baseline_allocated, first.breakdown) == (
        second.peak_allocated, second.first_step_peak_allocated, second.baseline_allocated, second.breakdown)


def _bare_loop_peak(micro: int, accum: int) -> int:
    """The accumulation loop a user would write, measured with the tracker directly."""
    workload = load_workload("gpt", dict(TINY))
    torch.manual_seed(0)
    model = workload.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    generator = torch.Generator().manual_seed(0)
    host = [workload.make_batch(micro, generator) for _ in range(accum)]

    def train_step() -> None:
        for inputs, labels in host:
            inputs, labels = inputs.clone(), labels.clone()  # "copy to the device"
            loss = workload.loss(model(inputs), (inputs, labels))
            if accum > 1:
                loss = loss / accum  # a large batch (accum 1) is the plain loop: no division
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tracker = LiveBytesTracker("cpu")
    tracker.adopt({"params": list(model.parameters())})
    with tracker:
        train_step()
        train_step()  # warm-up: optimizer state now exists
        tracker.reset_peak()
        train_step()
    return tracker.peak


@pytest.mark.parametrize("micro,accum", [(8, 1), (8, 4)])
def test_harness_peak_equals_a_bare_hand_written_loop(runner, micro, accum):
    scenario = "large-batch" if accum == 1 else "accumulated"
    assert peak(runner, "gpt", scenario, micro, accum) == _bare_loop_peak(micro, accum)


def test_breakdown_sums_to_the_peak_and_names_the_categories(runner):
    record = runner.measure(Case("gpt", "accumulated", 8, 2, TINY, warmup=2, steps=1))
    assert sum(record.breakdown.values()) == record.peak_allocated
    assert record.breakdown["params"] == param_bytes("gpt")
    assert record.breakdown["grads"] == param_bytes("gpt")
    n_params = len(list(load_workload("gpt", dict(TINY)).build_model().parameters()))
    # AdamW: exp_avg and exp_avg_sq per parameter, plus a 4-byte `step` tensor per parameter.
    assert record.breakdown["optimizer"] == 2 * param_bytes("gpt") + 4 * n_params
    assert record.breakdown["activations"] > 0


def test_set_to_none_false_keeps_gradients_in_the_baseline(runner):
    freed = runner.measure(Case("gpt", "large-batch", 8, 1, TINY, warmup=2, steps=1, set_to_none=True))
    kept = runner.measure(Case("gpt", "large-batch", 8, 1, TINY, warmup=2, steps=1, set_to_none=False))
    assert kept.baseline_allocated - freed.baseline_allocated == param_bytes("gpt")


def test_plain_sgd_plug_in_holds_no_optimizer_state(runner, plugin_path):
    record = runner.measure(Case(f"{plugin_path}:sgd", "large-batch", 8, 1, warmup=2, steps=1))
    assert record.status == "ok"
    assert record.optimizer == "SGD(foreach)"
    assert record.breakdown["optimizer"] < record.breakdown["params"]  # temporaries only, no state
