"""accumbench plan: candidates, fits, the recommendation, on synthetic and on real results."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from accumbench.cases import MAX_ACCUM_STEPS, MAX_EFFECTIVE_BATCH, Case
from accumbench.cli import main
from accumbench.plan import (
    ACCUMULATED,
    SINGLE,
    NothingFits,
    Observation,
    PlanError,
    candidate_cases,
    divisor_pairs,
    format_plan,
    make_plan,
    memory_lines,
    observations_from_records,
    orders,
    plan_to_dict,
    select_records,
)
from accumbench.records import Record, write_records
from accumbench.runner import Runner

GIB = 1 << 30


def line_peak(micro: int, accum: int) -> int:
    """A synthetic workload: 2 GiB fixed + 0.5 GiB per sample, +0.25 GiB when accumulating."""
    return 2 * GIB + micro * GIB // 2 + (GIB // 4 if accum > 1 else 0)


def observations(micros=(1, 4, 16), speeds=None) -> list[Observation]:
    speeds = speeds or {}
    return [Observation(m, a, "ok", line_peak(m, a), speeds.get((m, a))) for m in micros for a in (1, 4)]


def test_divisor_pairs():
    assert divisor_pairs(12) == [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)]
    assert divisor_pairs(1) == [(1, 1)]
    with pytest.raises(PlanError):
        divisor_pairs(0)
    for n in (2, 16, 36, 97, 360, 1024, 3 * 5 * 7 * 11):  # squares, primes, powers of two
        assert divisor_pairs(n) == [(m, n // m) for m in range(1, n + 1) if n % m == 0], n


def test_divisor_pairs_of_a_huge_batch_take_no_time():
    # Scanning every number up to N hung the plan; divisors come in pairs below sqrt(N).
    assert divisor_pairs(MAX_EFFECTIVE_BATCH) == [(1, MAX_EFFECTIVE_BATCH), (MAX_EFFECTIVE_BATCH, 1)]  # a prime
    assert len(divisor_pairs(2**30)) == 31


def test_candidates_leave_out_more_accumulation_steps_than_a_case_may_have():
    cases = candidate_cases("mlp", {}, 2**21)
    assert cases and all(c.accum_steps <= MAX_ACCUM_STEPS for c in cases)
    assert (2**21, 1) in {(c.micro_batch, c.accum_steps) for c in cases}


@pytest.mark.parametrize("args, message", [
    (["--effective-batch", "99999999999999999999"], "Invalid value for '--effective-batch'"),
    (["--effective-batch", "8", "--compile"], "error: the estimate meter does not predict --compile"),
])
def test_plan_refuses_up_front(args, message):
    result = CliRunner().invoke(main, ["plan", "--workload", "mlp", "--memory-budget", "1GiB", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert "estimating" not in result.stderr  # refused before the first estimate, not after each


def test_lines_fit_the_observations_per_kind():
    lines = memory_lines(observations())
    assert lines[SINGLE].bytes_per_sample == pytest.approx(GIB / 2)
    assert lines[ACCUMULATED].intercept_bytes == pytest.approx(2.25 * GIB)


def test_without_throughput_the_largest_micro_batch_that_fits_is_recommended():
    plan = make_plan(64, 20 * GIB, observations(), margin=0.10)
    # 18 GiB usable; accumulating: 2.25 + 0.5 m <= 18 -> m <= 31.5 -> 16 x 4.
    assert (plan.recommended.micro_batch, plan.recommended.accum_steps) == (16, 4)
    assert plan.recommended.peak_source == "measured"
    by_micro = {c.micro_batch: c for c in plan.candidates}
    assert by_micro[32].peak_source == "fit" and not by_micro[32].fits
    assert by_micro[32].predicted_peak == line_peak(32, 2)
    assert all(c.predicted_peak <= plan.usable_bytes for c in plan.candidates if c.fits)
    assert "largest micro-batch that fits" in plan.reason


def test_the_fastest_fitting_candidate_wins_and_a_faster_one_that_does_not_fit_never_does():
    speeds = {(4, 4): 900.0, (16, 4): 800.0, (16, 1): 5000.0}  # 16 x 1 (large batch) is fastest...
    obs = observations(speeds=speeds)
    plan = make_plan(16, 9 * GIB, obs, margin=0.0)  # ...but 2 + 8 = 10 GiB does not fit in 9
    assert (plan.recommended.micro_batch, plan.recommended.accum_steps) == (4, 4)
    assert plan.recommended.samples_per_s == 900.0
    big = make_plan(16, 11 * GIB, obs, margin=0.0)
    assert (big.recommended.micro_batch, big.recommended.accum_steps) == (16, 1)


def test_the_margin_is_kept_free():
    obs = observations()
    exact = make_plan(16, line_peak(16, 1), obs, margin=0.0)
    assert exact.recommended.micro_batch == 16
    kept = make_plan(16, line_peak(16, 1), obs, margin=0.10)
    assert kept.recommended.micro_batch < 16
    assert kept.recommended.predicted_peak <= 0.9 * line_peak(16, 1)


def test_a_measured_oom_rules_out_that_micro_batch_and_larger_ones():
    # The line says micro-batch 8 and up fit in 100 GiB, but the large batch of 8 ran out of memory.
    obs = observations() + [Observation(8, 1, "oom", None)]
    plan = make_plan(64, 100 * GIB, obs)
    by_micro = {c.micro_batch: c for c in plan.candidates}
    assert by_micro[8].peak_source == "measured OOM" and not by_micro[8].fits  # accumulating 8 x 8
    assert not by_micro[32].fits and not by_micro[64].fits and by_micro[4].fits
    assert plan.recommended.micro_batch == 4
    # An accumulating OOM says nothing about one large micro-step of a different size.
    only_accumulating = make_plan(64, 100 * GIB, observations() + [Observation(8, 4, "oom", None)])
    assert only_accumulating.recommended.micro_batch == 64


def test_an_impossible_budget_says_what_the_smallest_needs():
    with pytest.raises(NothingFits, match=r"micro-batch 1 x 64, needs 2\.75 GiB"):
        make_plan(64, 2 * GIB, observations())


def test_accumulating_line_from_one_step_line_plus_gradients():
    obs = [Observation(m, 1, "ok", 100 + 10 * m, parameters=5) for m in (1, 2)]
    plan = make_plan(4, 10_000, obs, margin=0.0)
    by_pair = {(c.micro_batch, c.accum_steps): c for c in plan.candidates}
    assert by_pair[(2, 2)].peak_source == "fit + gradients"
    assert by_pair[(2, 2)].predicted_peak == 120 + 4 * 5


def test_no_usable_observations_is_a_plan_error():
    with pytest.raises(PlanError, match="predict no candidate"):
        make_plan(8, GIB, [Observation(3, 1, "ok", 100)])


def _record(**fields) -> Record:
    base = dict(run_id="r", case_id="c", workload="gpt-tiny", scenario="accumulated", micro_batch=2, accum_steps=4,
                effective_batch=8, amp="none", set_to_none=True, optimizer="AdamW(foreach)", peak_allocated=10,
                meter="cpu", device_name="cpu")
    base.update(fields)
    return Record(**base)


def test_select_records_names_the_mixed_setting():
    records = [_record(), _record(amp="bf16")]
    with pytest.raises(PlanError, match="mix amp values .*--amp"):
        select_records(records)
    assert len(select_records(records, amp="bf16")) == 1
    with pytest.raises(PlanError, match="no records of workload 'mlp'"):
        select_records(records, workload="mlp")


def test_plan_from_results_leaves_multi_process_records_out(tmp_path):
    single = _record(case_id="one", micro_batch=2, accum_steps=4, peak_allocated=1000, samples_per_s=100.0)
    ddp = _record(case_id="ddp", micro_batch=2, accum_steps=4, peak_allocated=900, samples_per_s=300.0, world_size=2,
                  effective_batch=16)
    path = tmp_path / "mixed.jsonl"
    write_records(path, [single, ddp])
    args = ["plan", "--results", str(path), "--effective-batch", "8", "--memory-budget", "1GiB", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["recommended"]["predicted_peak"] == 1000  # the single-process record's
    write_records(tmp_path / "ddp.jsonl", [ddp])
    result = CliRunner().invoke(main, ["plan", "--results", str(tmp_path / "ddp.jsonl"), *args[3:]])
    assert result.exit_code == 2 and "only multi-process records (world size 2)" in result.stderr


def test_plan_from_results_with_checkpointed_twins_explores_the_measured_lever(tmp_path):
    import math

    MiB = 2**20

    def timed(case_id, micro, accum, peak_mib, step_s, **levers):
        steps = tuple(step_s * (1 + 0.01 * math.sin(k)) for k in range(20))
        return _record(case_id=case_id, micro_batch=micro, accum_steps=accum, effective_batch=micro * accum,
                       scenario="large-batch" if accum == 1 else "accumulated", peak_allocated=peak_mib * MiB,
                       step_times_s=steps, samples_per_s=micro * accum / step_s, **levers)

    records = [timed("e8", 8, 1, 100, 0.008), timed("e4", 4, 2, 60, 0.012),
               timed("c8", 8, 1, 50, 0.010, checkpoint="blocks"), timed("c4", 4, 2, 35, 0.015, checkpoint="blocks"),
               # Micro-batch 16 feeds the memory lines but is no configuration of effective batch 8.
               timed("e16", 16, 1, 180, 0.014), timed("c16", 16, 1, 80, 0.020, checkpoint="blocks")]
    path = tmp_path / "levers.jsonl"
    write_records(path, records)
    args = ["plan", "--results", str(path), "--effective-batch", "8", "--memory-budget", "80MiB", "--margin", "0%"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # As asked (eager): 8 x 1 needs 100 MiB, so 4 x 2; checkpointed, 8 x 1 fits at 50 MiB.
    assert "recommended: micro-batch 4 x 2" in result.output
    assert "  ckpt-blocks: 2 configuration(s) fit, up to micro-batch 8; best 8 x 1, peak 50.0 MiB" in result.output
    # Measured both ways: the cost with its bootstrap interval, 10 ms against 8 ms at micro-batch 8.
    assert "checkpointing: -50.0 MiB at micro-batch 8 (median -37.5 MiB over 2 configuration(s))" in result.output
    assert "+25% step time there (" in result.output and ", 95% interval; median +25% over the 2)" in result.output
    assert "recommended across levers: ckpt-blocks, micro-batch 8 x 1" in result.output
    # A tool reading --json gets the same answer (the exploration was left out of it).
    data = json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)
    assert data["recommended"]["micro_batch"] == 4 and data["levers"]["recommended"] == "ckpt-blocks"
    options = {o["levers"]: o["plan"]["recommended"] for o in data["levers"]["options"]}
    assert (options["eager"]["micro_batch"], options["ckpt-blocks"]["micro_batch"]) == (4, 8)
    # Without a twin in the results there is nothing to explore.
    write_records(tmp_path / "eager.jsonl", records[:2])
    alone = CliRunner().invoke(main, ["plan", "--results", str(tmp_path / "eager.jsonl"), *args[3:]])
    assert alone.exit_code == 0 and "levers explored" not in alone.output


def test_select_records_keeps_one_lever_setting_a_checkpointed_twin_being_another_configuration():
    from accumbench.levers import Levers

    eager, checkpointed = _record(peak_allocated=10), _record(peak_allocated=7, checkpoint="blocks")
    assert select_records([eager, checkpointed], levers=Levers()) == [eager]
    assert select_records([eager, checkpointed], levers=Levers(checkpoint="blocks")) == [checkpointed]
    with pytest.raises(PlanError, match=r"no records with levers lora-r=4,targets=qkv; the results hold ckpt-blocks, "
                                        r"eager \(choose with --checkpoint"):
        select_records([eager, checkpointed], levers=Levers(lora="r=4,targets=qkv"))


# --- on real results: the recommendation fits when it is run -------------------------------------

@pytest.mark.slow  # a few seconds on 2 cores: .ci/run's slow step runs it
def test_plan_from_real_cpu_results_recommends_a_configuration_that_fits(tmp_path):
    runner = Runner(torch.device("cpu"))
    tiny = (("size", "tiny"),)
    cases = [Case("gpt", "large-batch", m, 1, tiny, warmup=1, steps=2) for m in (2, 8)] + \
            [Case("gpt", "accumulated", m, 2, tiny, warmup=1, steps=2) for m in (2, 8)]
    records = [runner.measure(c) for c in cases]
    peaks = {(r.micro_batch, r.accum_steps): r.peak_allocated for r in records}
    budget = (peaks[(2, 2)] + peaks[(8, 2)]) // 2  # between micro-batch 2 and 8 when accumulating
    plan = make_plan(16, budget, observations_from_records(records), margin=0.0)
    chosen = plan.recommended
    assert chosen.fits and 2 <= chosen.micro_batch < 8 and chosen.micro_batch * chosen.accum_steps == 16
    # Run what was recommended: its measured peak is within the budget.
    check = runner.measure(Case("gpt", "accumulated", chosen.micro_batch, chosen.accum_steps, tiny, warmup=1, steps=1))
    assert check.peak_allocated <= budget

    path = tmp_path / "cpu.jsonl"
    write_records(path, records)
    result = CliRunner().invoke(main, ["plan", "--results", str(path), "--effective-batch", "16",
                                       "--memory-budget", str(budget), "--margin", "0%", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["recommended"]["micro_batch"] == chosen.micro_batch
    assert data["workload"] == "gpt-tiny"


# --- the command ---------------------------------------------------------------------------------

def test_plan_command_estimates_when_given_no_results():
    result = CliRunner().invoke(main, ["plan", "--workload", "mlp", "--workload-opt", "size=tiny",
                                       "--effective-batch", "8", "--memory-budget", "1GiB", "--device-kind", "cpu"])
    assert result.exit_code == 0, result.output
    assert "recommended: micro-batch 8 x 1" in result.output
    assert "estimated" in result.output
    # Each candidate says when it is estimated (a large model takes seconds per candidate).
    lines = [line for line in result.stderr.splitlines() if line.startswith("  [")]
    assert len(lines) == 4 and lines[-1].startswith("  [4/4] ") and all(": peak " in line for line in lines)


@pytest.mark.slow  # two plans with their lever exploration: ~2.5 s each
@pytest.mark.parametrize("given, compared", [((), "ckpt-blocks"), (("--checkpoint", "blocks"), "eager")])
def test_plans_lever_exploration_estimates_only_the_setting_the_plan_did_not(given, compared):
    result = CliRunner().invoke(main, ["plan", "--workload", "gpt", "--effective-batch", "8", "--memory-budget", "1GiB",
                                       "--device-kind", "cpu", *given])
    assert result.exit_code == 0, result.output
    # 4 candidates for the plan, 4 more for the other checkpointing setting, each said as it is done.
    lines = [line for line in result.stderr.splitlines() if line.startswith("  [")]
    assert [line[:8] for line in lines] == [f"  [{i}/4] " for i in (1, 2, 3, 4)] * 2
    assert f"estimating 4 candidate(s) with {compared} to compare..." in result.stderr
    assert "levers explored:" in result.output and "checkpointing: " in result.output


@pytest.mark.slow  # a plan and its lever exploration: ~2.7 s
def test_when_nothing_fits_plan_still_says_whether_checkpointing_would_fit():
    # Tiny GPT at sequence 256 on the cpu kind: 1 x 8 needs 4.92 MiB eager, 3.54 MiB checkpointed.
    result = CliRunner().invoke(main, ["plan", "--workload", "gpt", "--workload-opt", "seq_len=256",
                                       "--effective-batch", "8", "--memory-budget", "4.5MiB", "--margin", "0%",
                                       "--device-kind", "cpu"])
    assert result.exit_code == 1  # nothing fits as asked
    assert "no configuration fits: " in result.stderr and "needs 4.92 MiB" in result.stderr
    assert "  eager: not planned: no configuration of effective batch 8 fits" in result.output
    assert "  ckpt-blocks: 1 configuration(s) fit, up to micro-batch 1; best 1 x 8, peak 3.54 MiB" in result.output
    assert "recommended across levers: ckpt-blocks, micro-batch 1 x 8" in result.output
    # What checkpointing saves and costs, from the candidates estimated both ways.
    assert "  checkpointing: -11.9 MiB at micro-batch 8 (median -4.40 MiB over 4 configuration(s))" in result.output


def test_plan_command_exit_codes(tmp_path):
    runner = CliRunner()
    impossible = runner.invoke(main, ["plan", "--workload", "mlp", "--workload-opt", "size=tiny",
                                      "--effective-batch", "8", "--memory-budget", "1KiB", "--device-kind", "cpu"])
    assert impossible.exit_code == 1
    assert "no configuration fits" in impossible.output and "needs" in impossible.output
    for args, message in [
        (["--memory-budget", "lots", "--workload", "mlp"], "not a size"),
        (["--memory-budget", "1GiB"], "give --workload"),
        (["--memory-budget", "1GiB", "--workload", "mlp", "--margin", "150%"], "--margin"),
        (["--memory-budget", "1GiB", "--results", str(tmp_path / "missing.jsonl")], "no such file"),
        (["--memory-budget", "1GiB", "--workload", "mlp", "--scenario", "multitask-combined"], "multi-task"),
    ]:
        result = runner.invoke(main, ["plan", "--effective-batch", "8", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output


def test_format_plan_marks_the_recommendation():
    text = format_plan(make_plan(16, 20 * GIB, observations()))
    assert "<- recommended" in text and "recommended: micro-batch 16 x 1" in text


def test_a_small_slope_per_sample_reads_in_its_own_unit():
    # 35 KiB per sample printed as "0.0 MiB per sample".
    small = [Observation(m, 1, "ok", 600 * 1024 + 35 * 1024 * m, None) for m in (1, 2, 4, 8)]
    assert "+ 35.0 KiB per sample" in format_plan(make_plan(8, GIB, small))


def test_small_amounts_read_in_their_own_unit():
    from accumbench.plan import format_bytes as _gib  # the plan prints bytes as every command does

    assert [_gib(n) for n in (3 * 2**30, 1.5 * 2**20, 2048, 100, None)] == [
        "3.00 GiB", "1.50 MiB", "2.00 KiB", "100 B", "-"]


def test_plan_ranks_by_samples_per_s_and_says_where_each_number_comes_from():
    from accumbench.plan import Observation, cost_line, make_plan

    gib = 2**30
    observations = [
        Observation(32, 8, "ok", 16 * gib, 617.0),                          # measured
        Observation(8, 32, "ok", 6 * gib, 310.0, speed_predicted=True),     # estimated
        Observation(1, 16, "ok", 3 * gib, 33.0),                            # lends to 1 x 256
        Observation(16, 1, "ok", 9 * gib, None),                            # no throughput
        Observation(64, 1, "ok", 31 * gib, 650.0),
    ]
    plan = make_plan(256, 24 * gib, observations)
    by_pair = {(c.micro_batch, c.accum_steps): c for c in plan.candidates}
    assert by_pair[(32, 8)].speed_source == "measured"
    assert by_pair[(8, 32)].speed_source == "estimated"
    assert by_pair[(1, 256)].speed_source == "from mb=1 x16" and by_pair[(1, 256)].samples_per_s == 33.0
    assert by_pair[(16, 16)].speed_source is None and by_pair[(16, 16)].samples_per_s is None
    assert by_pair[(1, 256)].peak_source == "measured at 1x16"
    # 64 x 4 would be faster, but does not fit: the fastest that fits is recommended.
    assert (plan.recommended.micro_batch, plan.recommended.accum_steps) == (32, 8)
    ranked = [(c.micro_batch, c.accum_steps) for c in plan.ranked()]
    assert ranked[:4] == [(64, 4), (32, 8), (8, 32), (1, 256)]
    line = cost_line(plan, by_pair[(8, 32)])
    assert line == "8x32: 6.00 GiB (measured), ~310 samples/s (estimated), 2.0x slower than 32x8"


def _speed_plan(fast_times, slow_times, **observed):
    """A plan of effective batch 64 whose 64x1 and 32x2 both fit, with the given step times."""
    gib = 2**30
    return make_plan(64, 40 * gib, [
        Observation(64, 1, "ok", 10 * gib, 64 / sorted(fast_times)[len(fast_times) // 2], step_times=fast_times,
                    **observed),
        Observation(32, 2, "ok", 6 * gib, 64 / sorted(slow_times)[len(slow_times) // 2], step_times=slow_times,
                    **observed),
    ])


def _pair(plan, micro_batch, accum_steps):
    return next(c for c in plan.candidates if (c.micro_batch, c.accum_steps) == (micro_batch, accum_steps))


def test_a_measured_slowdown_comes_with_its_interval():
    from accumbench.plan import cost_line

    fast = (0.100, 0.101, 0.099, 0.100, 0.102, 0.100, 0.098, 0.101)
    slow = tuple(2 * t for t in fast)
    plan = _speed_plan(fast, slow)
    slower = _pair(plan, 32, 2)
    ratio = plan.speed_ratio(slower)
    assert orders(ratio) and ratio.low < 2.0 < ratio.high and ratio.high / ratio.low < 1.2
    line = cost_line(plan, slower)
    assert "2.0x slower than 64x1 (" in line and "95% interval" in line
    assert "not measurably" not in plan.reason


def test_a_measured_difference_inside_the_noise_is_no_measurable_difference():
    from accumbench.plan import cost_line

    fast = (0.100, 0.110, 0.095, 0.120, 0.098, 0.105, 0.090, 0.115)
    slow = tuple(t * 1.02 for t in reversed(fast))
    plan = _speed_plan(fast, slow)
    other = _pair(plan, 32, 2)
    ratio = plan.speed_ratio(other)
    assert ratio.known and not orders(ratio)
    assert f"not measurably slower than {plan.recommended.label}" in cost_line(plan, other)
    assert (f"{other.label} is not measurably slower than {plan.recommended.label} and needs 6.00 GiB against "
            "10.0 GiB") in plan.reason
    assert plan_to_dict_interval(plan, other) == [ratio.low, ratio.high]


def plan_to_dict_interval(plan, candidate):
    from accumbench.plan import plan_to_dict

    entry = next(c for c in plan_to_dict(plan)["candidates"]
                 if (c["micro_batch"], c["accum_steps"]) == (candidate.micro_batch, candidate.accum_steps))
    return entry["slowdown_interval"]


@pytest.mark.parametrize("slowdown, error, claims", [(2.0, 1.4, True), (1.2, 1.4, False), (1.2, 1.1, True)])
def test_a_predicted_slowdown_is_claimed_only_beyond_the_models_error(slowdown, error, claims):
    from accumbench.plan import cost_line

    gib = 2**30
    plan = make_plan(64, 40 * gib, [
        Observation(64, 1, "ok", 10 * gib, 1000.0, speed_predicted=True, speed_error=error),
        Observation(32, 2, "ok", 6 * gib, 1000.0 / slowdown, speed_predicted=True, speed_error=error)])
    other = _pair(plan, 32, 2)
    ratio = plan.speed_ratio(other)
    assert ratio.low == pytest.approx(slowdown / error) and ratio.high == pytest.approx(slowdown * error)
    line = cost_line(plan, other)
    text = format_plan(plan)
    assert ("within the step-time model's error of 64x1" in line) is not claims
    assert ("within the step-time model's error" in plan.reason) is not claims
    assert "held-out validation" in text  # the interval says what it is
    if claims:
        assert f"slower than 64x1 ({slowdown / error:.3g}-{slowdown * error:.3g}x)" in line


def test_an_equal_speed_without_an_interval_reads_as_fast():
    from accumbench.plan import cost_line

    gib = 2**30
    plan = make_plan(64, 40 * gib, [Observation(64, 1, "ok", 10 * gib, 1000.0),
                                    Observation(32, 2, "ok", 6 * gib, 999.0)])
    assert cost_line(plan, _pair(plan, 32, 2)).endswith(", as fast as 64x1")


def test_a_borrowed_or_mixed_speed_gets_no_interval():
    from accumbench.plan import speed_ratio

    gib = 2**30
    plan = make_plan(64, 40 * gib, [
        Observation(64, 1, "ok", 10 * gib, 1000.0, step_times=(0.064,) * 8),
        Observation(32, 2, "ok", 6 * gib, 500.0, speed_predicted=True, speed_error=1.3)])
    a, b = plan.recommended, _pair(plan, 32, 2)
    assert not speed_ratio(a, b).known and speed_ratio(a, b).value == pytest.approx(2.0)


def test_observations_carry_measured_step_times_and_the_estimates_ratio_error():
    measured = _record(meter="cuda", step_times_s=(0.1, 0.2), samples_per_s=10.0)
    estimated = _record(meter="estimate", samples_per_s=12.0, step_times_s=(),
                        assumptions={"kind": "h100", "speed_ratio_error": 1.37})
    m, e = observations_from_records([measured, estimated])
    assert m.step_times == (0.1, 0.2) and m.speed_error is None and not m.speed_predicted
    assert e.step_times == () and e.speed_error == 1.37 and e.speed_predicted


def test_an_estimate_above_the_devices_memory_never_fits_whatever_the_budget():
    # The estimate meter keeps the peak of a case it predicts out of memory (status "oom"): the
    # peak is shown, but no budget, however large, makes that micro-batch or a larger one fit.
    obs = observations() + [Observation(8, 1, "oom", line_peak(8, 1))]
    plan = make_plan(8, 1000 * GIB, obs, exact_source="estimated")
    by_pair = {(c.micro_batch, c.accum_steps): c for c in plan.candidates}
    assert by_pair[(8, 1)].predicted_peak == line_peak(8, 1)
    assert by_pair[(8, 1)].peak_source == "estimated, OOM" and not by_pair[(8, 1)].fits
    assert by_pair[(4, 2)].fits and plan.recommended.micro_batch == 4
    # Beyond it, where only the line predicts: accumulating holds more than one micro-step.
    wider = {(c.micro_batch, c.accum_steps): c for c in make_plan(64, 1000 * GIB, obs, exact_source="estimated").candidates}
    for pair in ((8, 8), (32, 2), (64, 1)):
        assert wider[pair].peak_source == "estimated OOM" and not wider[pair].fits
    assert wider[(4, 16)].fits


def test_when_nothing_fits_the_error_carries_the_candidates_with_no_recommendation():
    with pytest.raises(NothingFits) as caught:
        make_plan(64, 2 * GIB, observations())
    unfit = caught.value.plan
    assert unfit.recommended is None and len(unfit.candidates) == len(divisor_pairs(64))
    data = plan_to_dict(unfit)
    assert data["recommended"] is None and not any(c["fits"] for c in data["candidates"])
    assert data["reason"] == str(caught.value)


def test_plan_checks_levers_and_knobs_against_the_workload_before_estimating():
    runner = CliRunner()
    for args, message in [(["--freeze", "nomatch"], "--freeze 'nomatch' matches no parameter"),
                          (["--checkpoint", "nomatch"], "--checkpoint 'nomatch' matches no module"),
                          (["--loss-norm", "token"], "needs a workload that counts loss elements")]:
        result = runner.invoke(main, ["plan", "--workload", "mlp", "--workload-opt", "size=tiny", *args,
                                      "--effective-batch", "8", "--memory-budget", "1GiB", "--device-kind", "cpu"])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "estimating" not in result.output


def test_plan_json_when_nothing_fits_lists_what_each_candidate_needs():
    result = CliRunner().invoke(main, ["plan", "--workload", "mlp", "--workload-opt", "size=tiny", "--json",
                                       "--effective-batch", "4", "--memory-budget", "1KiB", "--device-kind", "cpu"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["recommended"] is None and len(data["candidates"]) == 3
    assert all(c["predicted_peak"] > 1024 and not c["fits"] for c in data["candidates"])


def test_plan_says_when_the_budget_is_more_than_the_device_holds():
    result = CliRunner().invoke(main, ["plan", "--workload", "mlp", "--workload-opt", "size=tiny",
                                       "--effective-batch", "4", "--memory-budget", "100GiB",
                                       "--assume", "total_memory_bytes=200MiB", "--assume", "reserve_bytes=0"])
    assert result.exit_code == 0, result.output
    assert "note: the budget (100 GiB) is more than the H100's usable 200 MiB" in result.stderr


def _estimated_results(tmp_path):
    records = [_record(case_id=f"c{m}", meter="estimate", device_name="estimate: H100", micro_batch=m,
                       accum_steps=8 // m, scenario="large-batch" if m == 8 else "accumulated",
                       peak_allocated=1000 + 100 * m, samples_per_s=100.0 * m, step_times_s=(),
                       assumptions={"kind": "h100", "speed_ratio_error": 1.5}) for m in (1, 2, 4, 8)]
    path = tmp_path / "estimates.jsonl"
    write_records(path, records)
    return path


def test_plan_from_results_takes_the_users_speed_ratio_error_and_refuses_flags_it_would_ignore(tmp_path):
    path = _estimated_results(tmp_path)
    runner = CliRunner()
    base = ["plan", "--results", str(path), "--effective-batch", "8", "--memory-budget", "1MiB", "--json"]

    def interval(*extra):
        result = runner.invoke(main, [*base, *extra])
        assert result.exit_code == 0, result.output
        return next(c["slowdown_interval"] for c in json.loads(result.stdout)["candidates"] if c["micro_batch"] == 4)

    assert interval() == pytest.approx([2 / 1.5, 2 * 1.5])  # the records' own error
    assert interval("--assume", "speed_ratio_error=3") == pytest.approx([2 / 3, 2 * 3])
    for extra, message in [(["--assume", "flop_efficiency=0.5"], "with --results only --assume speed_ratio_error"),
                           (["--assume", "speed_ratio_error=0.5"], "speed_ratio_error must be a finite factor"),
                           (["--device-kind", "a100"], "--device-kind chooses the device of estimates made here")]:
        result = runner.invoke(main, [*base, *extra])
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
