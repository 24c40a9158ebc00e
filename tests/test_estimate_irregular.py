"""The estimate's shortcuts (repeat micro-step 2, replay between two sizes, one model for a
group) where they do not hold, and ops whose sizes only the batch decides: on the cpu device
kind every estimate equals the cpu meter's peak to the byte, and the record says how it was
obtained. Workloads: tests/workloads/irregular_batches.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from accumbench.cases import Case
from accumbench.estimate import batch_shape, estimate_cases, estimate_runner
from accumbench.estimate_assumptions import assumptions_for
from accumbench.meters.known_values import KnownValues
from accumbench.runner import Runner

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = str(Path(__file__).parent / "workloads" / "irregular_batches.py")


def plugin_case(factory: str, scenario: str, micro: int, accum: int = 1, **knobs) -> Case:
    return Case(f"{PLUGIN}:{factory}", scenario, micro, accum, **{"warmup": 1, "steps": 1, **knobs})


@pytest.fixture(scope="module")
def cpu_runner() -> Runner:
    return Runner(torch.device("cpu"))


def notes(record) -> str:
    return "; ".join(record.assumptions["applied"])


def assert_estimates_equal_the_cpu_meter(cpu_runner, cases):
    """Estimate the cases as one request (grouped) and check each against the cpu meter."""
    estimated = estimate_cases(cases, assumptions_for("cpu"))
    for the_case, record in zip(cases, estimated):
        measured = cpu_runner.measure(the_case)
        assert measured.status == record.status == "ok", (measured.error, record.error)
        assert record.peak_allocated == measured.peak_allocated, (the_case.label(), notes(record))
    return estimated


# --- repeat: micro-steps 3..N -------------------------------------------------------------------

def test_micro_batches_of_different_shapes_are_profiled_in_full(cpu_runner):
    # Each micro-batch is padded to its own length: the 3rd and 4th are not the 2nd.
    cases = [plugin_case("dynamic_length", "accumulated", 8, accum) for accum in (2, 4)]
    two, four = assert_estimates_equal_the_cpu_meter(cpu_runner, cases)
    assert "profiled in full, all 4 micro-steps: its micro-batches differ in shape" in notes(four)
    assert "profiled in full" not in notes(two) and two.first_step_peak_allocated is not None


def test_sizes_the_batch_values_decide_are_profiled_in_full(cpu_runner):
    # Same shapes every micro-batch, but nonzero(batch) picks more tokens in the 3rd.
    cases = [plugin_case("batch_nonzero", "accumulated", 5, accum) for accum in (2, 3)]
    _, three = assert_estimates_equal_the_cpu_meter(cpu_runner, cases)
    assert "all 3 micro-steps: sizes depend on the batch's values (aten.nonzero)" in notes(three)


# --- replay between two sizes ---------------------------------------------------------------------

@pytest.mark.slow  # a few seconds on 2 cores: .ci/run's slow step runs it
def test_a_size_whose_batch_is_not_the_smaller_one_scaled_is_profiled(cpu_runner):
    # Padded to the longest sample: 128 tokens at micro-batches 4 and 6, 64 at 5. The logs at 4
    # and 6 are proportional, so replaying 5 from them (as before) over-estimated it by 75%.
    cases = [plugin_case("padded_to_longest", "large-batch", micro) for micro in (4, 5, 6)]
    records = assert_estimates_equal_the_cpu_meter(cpu_runner, cases)
    assert "profiled, not replayed: its micro-batches are not those of micro-batch 4 scaled to it" in notes(records[1])


def test_regular_workloads_keep_the_shortcuts(cpu_runner):
    # A fixed-shape workload still replays the size in between and repeats micro-step 2.
    cases = [Case("mlp", "accumulated", micro, 4, warmup=1, steps=1) for micro in (2, 4, 6, 8)]
    records = assert_estimates_equal_the_cpu_meter(cpu_runner, cases)
    assert "replayed from micro-batches 2 and 8" in notes(records[1])
    assert "profiled (checks the replay of the sizes between 2 and 8)" in notes(records[2])
    assert all("micro-steps 3..4 repeat micro-step 2" in notes(r) for r in records)
    assert not any("profiled in full" in notes(r) or "not replayed" in notes(r) for r in records)


@pytest.mark.slow  # five sizes on both meters, a few seconds on 2 cores: .ci/run's slow step runs it
def test_replay_is_checked_at_a_size_in_between(cpu_runner):
    # The model pads the batch to a multiple of 8 rows: the logs at 8 and 16 are proportional,
    # 12 runs 16 rows, and 10 and 14 would be replayed wrongly from 8 and 16 but for the check.
    cases = [plugin_case("pad8", "large-batch", micro) for micro in (8, 10, 12, 14, 16)]
    records = assert_estimates_equal_the_cpu_meter(cpu_runner, cases)
    assert "the log profiled at micro-batch 12 is not the one replayed from micro-batches 8 and 16" in notes(records[1])
    regular = assert_estimates_equal_the_cpu_meter(cpu_runner, [Case("mlp", "large-batch", micro, 1, warmup=1, steps=1)
                                                                for micro in (2, 3, 4, 8)])
    assert "profiled (checks the replay of the sizes between 2 and 8)" in notes(regular[2])
    assert "replayed from micro-batches 2 and 8" in notes(regular[1])


@pytest.mark.slow  # each case on its own, on both meters: .ci/run's slow step runs it
@pytest.mark.parametrize("factory", ["periodic", "layer_drop"])
def test_sizes_random_draws_or_the_models_state_decide_are_estimated_case_by_case(cpu_runner, factory):
    # A regulariser every 5th forward (a buffer counts them), or blocks skipped with torch.rand:
    # no micro-step repeats another, and no size can borrow another's profile.
    cases = [plugin_case(factory, "accumulated", 4, 8), plugin_case(factory, "large-batch", 8),
             plugin_case(factory, "large-batch", 16)]
    records = assert_estimates_equal_the_cpu_meter(cpu_runner, cases)
    assert not any("repeat micro-step 2" in notes(r) or "replayed" in notes(r) for r in records)


def test_a_step_the_models_state_decides_is_stepped_as_the_predicted_meter_steps(cpu_runner):
    # A regulariser every 5th forward: the cpu meter's peak is its one tracked step after the
    # warm-up (steps 2, 3 and 5 here: only the 5th forward is heavy); the estimate ran one warm-up
    # and one steady step whatever the case asked, and said so wrongly in the record.
    cases = [plugin_case("periodic", "large-batch", 8, warmup=warmup) for warmup in (1, 2, 4)]
    records = assert_estimates_equal_the_cpu_meter(cpu_runner, cases)
    assert len({r.peak_allocated for r in records}) == 2  # the 5th forward is the heavy one
    assert [(r.warmup_steps, r.measured_steps, r.steps_setting) for r in records] == [
        (1, 1, "1"), (2, 1, "1"), (4, 1, "1")]
    assert "stepped as a run: 4 warm-up and 1 measured step(s)" in notes(records[2])


@pytest.mark.slow  # two h100 estimates of five fake steps: ~2 s on 2 cores
def test_a_gpu_kind_steps_a_state_decided_case_over_every_step_the_cuda_meter_times():
    # The cuda meter's peak spans every timed step: 4 of them reach the 5th forward, 1 does not.
    h100 = estimate_runner(assumptions_for("h100"))
    one, four = (h100.measure(plugin_case("periodic", "large-batch", 8, steps=steps)) for steps in (1, 4))
    assert four.peak_allocated > one.peak_allocated and four.measured_steps == 4


def test_a_size_that_trains_fewer_parameters_is_estimated_on_its_own(cpu_runner):
    # Below 8 samples a head gets no gradient, so a run there has no AdamW state for it; the
    # group's model, warmed up at 8, has them: 43,056 B counted that a run never makes.
    cases = [plugin_case("branch8", "accumulated", micro, 2) for micro in (2, 8)]
    assert_estimates_equal_the_cpu_meter(cpu_runner, cases)


def test_batch_shapes_abstract_the_batch_dimension_only():
    a = batch_shape({"ids": torch.zeros(2, 16, dtype=torch.long), "n": 2, "tag": "x"})
    b = batch_shape({"ids": torch.zeros(4, 16, dtype=torch.long), "n": 4, "tag": "x"})
    assert a.kinds == b.kinds and (a.numbers, b.numbers) == ((2, 16, 2), (4, 16, 4))
    assert batch_shape(torch.zeros(2, 16).t()).numbers == (16, 2, 1, 16)  # strides of a view count
    assert batch_shape([torch.zeros(2)]).kinds != batch_shape((torch.zeros(2),)).kinds


# --- one model for a group --------------------------------------------------------------------------

@pytest.mark.slow  # a few seconds on 2 cores: .ci/run's slow step runs it
def test_zero_grads_peak_does_not_depend_on_the_other_sizes(cpu_runner):
    # At micro-batch 1 AccumulateGrad keeps the token's gradient as a view into the whole
    # sequence's gradient; zero_grad(set_to_none=False) keeps it. Warmed up at 3 only, the
    # estimate of 1 missed it.
    cases = [plugin_case("stolen_grad", "large-batch", micro, set_to_none=False) for micro in (1, 3)]
    one, _ = assert_estimates_equal_the_cpu_meter(cpu_runner, cases)
    alone = estimate_cases(cases[:1], assumptions_for("cpu"))[0]
    assert one.peak_allocated == alone.peak_allocated and one.baseline_allocated == alone.baseline_allocated


# --- ops whose output size only the batch decides ---------------------------------------------------

@pytest.mark.parametrize("factory", ["batch_mask", "ctc"])
def test_sizes_from_a_batch_mask_or_lengths_are_modelled(cpu_runner, factory):
    # h[mask] / masked_select(h, mask) with the mask from the batch, ctc_loss with target
    # lengths from the batch: the activations' values do not matter, the batch's do.
    cases = [plugin_case(factory, "large-batch", 2), plugin_case(factory, "accumulated", 4, 3)]
    _, accumulated = assert_estimates_equal_the_cpu_meter(cpu_runner, cases)
    assert "sizes depend on the batch's values" in notes(accumulated)


def test_a_size_the_activations_decide_is_still_refused():
    record = estimate_cases([plugin_case("activation_mask", "large-batch", 2)], assumptions_for("cpu"))[0]
    assert record.status == "error" and "\n" not in record.error
    assert "cannot model aten.index.Tensor" in record.error and "computed from weights or activations" in record.error


def test_a_packed_sequence_is_refused_saying_why():
    # Its lengths come from the batch, but the packed LSTM reads batch_sizes in C++: not "weights".
    record = estimate_cases([plugin_case("packed", "large-batch", 2)], assumptions_for("cpu"))[0]
    assert record.status == "error" and "\n" not in record.error
    assert "cannot model aten._pack_padded_sequence: packed sequences are not modelled" in record.error


@pytest.mark.parametrize("select", [
    lambda h, ids: h[ids > 4],
    lambda h, ids: h[:, ids[0] > 4],
    lambda h, ids: h.permute(2, 0, 1)[:, ids > 4],
    lambda h, ids: h[ids[:, 0] > 4, 1],
    lambda h, ids: torch.masked_select(h, (ids > 4)[..., None]),
    lambda h, ids: torch.masked_select(h.transpose(0, 1), (ids > 4).t()[..., None]),
], ids=["mask", "mask-dim1", "permuted", "mask-and-int", "masked-select", "masked-select-transposed"])
def test_a_batch_mask_on_an_unknown_activation_gives_the_real_layout(select):
    torch.manual_seed(0)
    ids = torch.randint(0, 10, (3, 5))
    real = select(torch.randn(3, 5, 4), ids)
    with FakeTensorMode(allow_non_fake_inputs=True), KnownValues() as values:
        weight = torch.nn.Parameter(torch.empty(3, 5, 4))
        values.forget([weight])  # an activation: no values
        fake = select(weight * 1, ids.clone())
    assert (fake.shape, fake.stride(), fake.untyped_storage().nbytes()) == (
        real.shape, real.stride(), real.untyped_storage().nbytes())
    assert values.batch_decided is not None and values.value_of(fake) is None
