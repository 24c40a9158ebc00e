"""Matching and verdicts of `compare_results` on hand-made records (no measuring here)."""

from __future__ import annotations

import random
import re

import pytest

from accumbench.compare import MismatchError, ThroughputCheck, compare_results
from accumbench.gate.checks import IMPROVEMENT, REGRESSION, SAME, UNTESTED
from accumbench.gate.compare import WARNING, case_key
from accumbench.records import load_results, write_records
from gate_helpers import noisy, record


def _three_cases(rng):
    return [record("a", 1_000_000, noisy(rng, 0.01, 12)),
            record("b", 2_000_000, noisy(rng, 0.02, 12)),
            record("c", 3_000_000, noisy(rng, 0.03, 12))]


def test_identical_results_pass():
    base = _three_cases(random.Random(0))
    result = compare_results(base, base)
    assert [c.verdict for c in result.cases] == [SAME] * 3
    assert result.exit_code == 0 and not result.failed
    assert result.only_baseline == result.only_current == ()
    assert all(c.memory.change == 0 for c in result.cases)


def test_memory_regression_names_the_case():
    rng = random.Random(0)
    base = _three_cases(rng)
    cur = list(base)
    cur[1] = record("b", 2_020_000, base[1].step_times_s)  # +1%
    result = compare_results(base, cur)
    assert result.exit_code == 1
    (bad,) = result.regressions
    assert bad.key == "b"
    assert bad.memory.verdict == REGRESSION and bad.throughput.verdict == SAME
    assert bad.reasons == ("memory: peak +19.5 KiB (+1.00%) exceeds tolerance 0.5%",)


def test_memory_improvement_is_shown_and_passes():
    base = [record("a", 1_000_000)]
    result = compare_results(base, [record("a", 900_000)])
    assert result.cases[0].verdict == IMPROVEMENT and result.exit_code == 0


def test_ok_to_oom_regresses_and_back_improves():
    ok = [record("a", 1_000_000)]
    oom = [record("a", None, (), status="oom", error="OutOfMemoryError: CUDA out of memory.\nmore")]
    down = compare_results(ok, oom)
    assert down.cases[0].verdict == REGRESSION and down.exit_code == 1
    assert down.cases[0].reasons == (
        "status: was ok, now runs out of memory (oom): OutOfMemoryError: CUDA out of memory.",)
    up = compare_results(oom, ok)
    assert up.cases[0].verdict == IMPROVEMENT and up.exit_code == 0
    still = compare_results(oom, oom)
    assert still.cases[0].verdict == SAME


def test_ok_to_error_regresses():
    result = compare_results([record("a")], [record("a", None, (), status="error", error="RuntimeError: boom")])
    assert result.cases[0].verdict == REGRESSION
    assert "now fails (error): RuntimeError: boom" in result.cases[0].reasons[0]


def test_missing_and_new_cases_are_listed_not_failed_unless_asked():
    base = [record("a"), record("gone")]
    cur = [record("a"), record("new")]
    result = compare_results(base, cur)
    assert result.only_baseline == ("gone",) and result.only_current == ("new",)
    assert [c.key for c in result.cases] == ["a"]
    assert result.exit_code == 0
    assert compare_results(base, cur, fail_on_missing=True).exit_code == 1


def test_world_size_is_part_of_the_key():
    base = [record("a", world_size=1), record("a", 2_000_000, world_size=2)]
    cur = [record("a", world_size=1), record("a", 3_000_000, world_size=2)]
    result = compare_results(base, cur)
    assert [c.key for c in result.cases] == ["a", "a [world_size=2]"]
    assert [c.verdict for c in result.cases] == [SAME, REGRESSION]
    assert case_key("a", 4) == "a [world_size=4]"


def test_duplicates_keep_the_last_record_and_say_so():
    base = [record("a", 1_000_000)]
    cur = [record("a", 5_000_000), record("a", 1_000_000)]
    result = compare_results(base, cur)
    assert result.cases[0].verdict == SAME
    assert result.notes == ("current: 2 records for a; the last one is used",)


def test_throughput_regression_gated_or_only_reported():
    rng = random.Random(1)
    base = [record("a", times=noisy(rng, 0.01, 15))]
    cur = [record("a", times=noisy(rng, 0.02, 15))]
    gated = compare_results(base, cur)
    assert gated.cases[0].verdict == REGRESSION and gated.cases[0].throughput.verdict == REGRESSION
    assert gated.cases[0].samples_per_s_change == pytest.approx(-0.5, abs=0.1)
    reported = compare_results(base, cur, throughput_check=ThroughputCheck(gated=False))
    assert reported.cases[0].verdict == WARNING and reported.exit_code == 0


def test_too_few_step_times_are_not_tested():
    result = compare_results([record("a", times=[0.01] * 5)], [record("a", times=[0.05] * 5)])
    assert result.cases[0].throughput.verdict == UNTESTED
    assert result.exit_code == 0


def test_a_slowdown_the_scatter_hides_and_an_untested_one_are_said_not_counted_ok():
    from accumbench.gate.checks import UNRESOLVED
    from accumbench.gate.compare import UNRESOLVED as CASE_UNRESOLVED
    from accumbench.gate.table import render_text

    rng = random.Random(3)
    scattered = [t * rng.choice((1.0, 2.0)) for t in noisy(rng, 0.010, 40)]  # a neighbour halves some steps
    slower = [1.3 * t for t in scattered]
    result = compare_results([record("a", times=scattered), record("b", times=[0.01] * 5)],
                             [record("a", times=slower), record("b", times=[0.05] * 5)])
    a, b = result.cases
    assert a.throughput.verdict == UNRESOLVED and a.verdict == CASE_UNRESOLVED == UNRESOLVED
    assert result.exit_code == 0  # never gated
    text = render_text(result)
    assert "within the runs' own scatter" in text and "not resolved" in text
    assert "(0 improved, 1 ok, 0 slower but not gated, 1 not resolved; throughput not tested in 1;" in text
    assert "Throughput not tested (1):" in text and "\n  b\n" in text  # the case is named
    assert result.counts()["throughput_untested"] == 1  # and counted for --json


@pytest.mark.parametrize("field, value", [("meter", "estimate"), ("torch_version", "2.12.0+cpu")])
def test_different_meter_or_torch_is_refused(field, value):
    with pytest.raises(MismatchError, match=re.escape(f"vs current '{value}'")):
        compare_results([record("a")], [record("a", **{field: value})])
    allowed = compare_results([record("a")], [record("a", **{field: value})], allow_device_mismatch=True)
    assert allowed.exit_code == 0
    assert "compared despite different" in allowed.notes[0]


def test_different_gpu_is_refused():
    base = [record("a", meter="cuda", device_name="NVIDIA H100 80GB HBM3")]
    cur = [record("a", meter="cuda", device_name="NVIDIA A10G")]
    with pytest.raises(MismatchError, match="--allow-device-mismatch"):
        compare_results(base, cur, throughput_check=ThroughputCheck(gated=False))


def test_cpu_model_only_matters_when_cpu_throughput_is_gated():
    # The cpu meter's peak is live tensor bytes: another processor (or thread count) cannot
    # change it, so a CI runner may gate memory against a baseline made elsewhere.
    base = [record("a", device_name="cpu (x86_64, 2 threads)")]
    cur = [record("a", device_name="cpu (x86_64, 4 threads)")]
    with pytest.raises(MismatchError):
        compare_results(base, cur)
    result = compare_results(base, cur, throughput_check=ThroughputCheck(gated=False))
    assert result.exit_code == 0
    assert result.mismatches[0].fatal is False
    assert "not checked for the cpu meter" in result.notes[0]


def test_dataframes_compare_like_records(tmp_path):
    rng = random.Random(2)
    base = _three_cases(rng)
    cur = [record("a", 1_000_000, noisy(rng, 0.01, 12)), record("b", 2_500_000, noisy(rng, 0.02, 12)),
           record("c", None, (), status="oom")]
    write_records(tmp_path / "b.jsonl", base)
    write_records(tmp_path / "c.jsonl", cur)
    from_frames = compare_results(load_results(tmp_path / "b.jsonl"), load_results(tmp_path / "c.jsonl"))
    from_records = compare_results(base, cur)
    assert from_frames.to_dict() == from_records.to_dict()
    assert [c.verdict for c in from_frames.cases] == [SAME, REGRESSION, REGRESSION]
