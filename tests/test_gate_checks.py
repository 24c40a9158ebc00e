"""Tolerance strategies parsed from strings, and their verdicts on synthetic inputs."""

from __future__ import annotations

import random

import pytest

from accumbench.gate.checks import (
    IMPROVEMENT,
    NOT_AVAILABLE,
    REGRESSION,
    SAME,
    UNRESOLVED,
    UNTESTED,
    MemoryCheck,
    ThroughputCheck,
    Tolerance,
    format_bytes,
)
from gate_helpers import noisy


@pytest.mark.parametrize(
    "text, amount, relative",
    [("0.5%", 0.005, True), ("10 %", 0.10, True), ("0", 0, False), ("4096", 4096, False),
     ("64KiB", 65536, False), ("1MiB", 2**20, False), ("1.5GB", 1.5e9, False), (".5%", 0.005, True)],
)
def test_tolerance_parse(text, amount, relative):
    tol = Tolerance.parse(text)
    assert tol.amount == pytest.approx(amount)
    assert tol.relative is relative
    assert str(tol) == text


@pytest.mark.parametrize("text", ["", "-1%", "ten%", "5 parsecs", "1%%", "%"])
def test_tolerance_parse_rejects(text):
    with pytest.raises(ValueError, match="cannot read tolerance"):
        Tolerance.parse(text)


def test_memory_check_relative():
    check = MemoryCheck.parse("0.5%")
    assert check.evaluate(1_000_000, 1_000_000).verdict == SAME
    assert check.evaluate(1_000_000, 1_004_000).verdict == SAME
    out = check.evaluate(1_000_000, 1_006_000)
    assert out.verdict == REGRESSION and out.fails
    assert out.change == pytest.approx(0.006)
    assert out.reason == "peak +5.86 KiB (+0.60%) exceeds tolerance 0.5%"
    assert check.evaluate(1_000_000, 990_000).verdict == IMPROVEMENT
    assert check.evaluate(None, 5).verdict == NOT_AVAILABLE


def test_memory_check_exact_catches_one_byte():
    check = MemoryCheck.parse("0")
    assert check.evaluate(1000, 1000).verdict == SAME
    assert check.evaluate(1000, 1001).verdict == REGRESSION


def test_memory_check_absolute():
    check = MemoryCheck.parse("1KiB")
    assert check.evaluate(10**9, 10**9 + 1024).verdict == SAME
    assert check.evaluate(10**9, 10**9 + 1025).verdict == REGRESSION


@pytest.mark.parametrize(
    "text, stat, tolerance",
    [("10%", "median", 0.10), ("median:5%", "median", 0.05), ("mean:20%", "mean", 0.20), ("MIN:1%", "min", 0.01)],
)
def test_throughput_check_parse(text, stat, tolerance):
    check = ThroughputCheck.parse(text)
    assert (check.stat, check.tolerance, check.alpha, check.gated) == (stat, pytest.approx(tolerance), 0.002, True)


@pytest.mark.parametrize("text, message", [("max:10%", "unknown statistic"), ("10MiB", "use a percentage"),
                                           ("median:", "cannot read tolerance")])
def test_throughput_check_parse_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        ThroughputCheck.parse(text)


def test_throughput_same_distribution_is_same():
    rng = random.Random(3)
    out = ThroughputCheck().evaluate(noisy(rng, 0.01, 20), noisy(rng, 0.01, 20))
    assert out.verdict == SAME and out.p_value > 0.002


def test_throughput_real_slowdown_regresses_and_says_why():
    rng = random.Random(3)
    out = ThroughputCheck().evaluate(noisy(rng, 0.01, 20, 0.02), noisy(rng, 0.02, 20, 0.02))
    assert out.verdict == REGRESSION and out.fails
    assert out.change == pytest.approx(1.0, abs=0.1)
    assert out.noise < 0.10
    assert "> 10% and Mann-Whitney U p=" in out.reason


def contaminated(rng: random.Random, center: float, n: int) -> list[float]:
    """A run that a busy neighbour process hit most of the time: 60% of the steps take 1.2-3x."""
    out = noisy(rng, center, n, 0.02)
    for i in rng.sample(range(n), int(0.6 * n)):
        out[i] *= rng.uniform(1.2, 3)
    return out


def test_throughput_shift_within_a_contaminated_runs_scatter_is_not_resolved():
    # Two runs of the same code, the second hit by a neighbour: its median moves by more than
    # 10% and the rank test calls it significant, but the shift is inside the run's own scatter.
    rng = random.Random(11)
    base, cur = noisy(rng, 0.010, 30, 0.02), contaminated(rng, 0.010, 30)
    loose = ThroughputCheck(tolerance=0.10)
    out = loose.evaluate(base, cur)
    assert out.change > 0.10 and out.p_value < 0.002 and out.noise > out.change
    assert out.verdict == UNRESOLVED and not out.fails  # said, never gated
    assert "within the runs' own scatter" in out.reason


def test_throughput_large_slowdown_is_caught_even_in_a_noisy_run():
    rng = random.Random(12)
    base, cur = contaminated(rng, 0.010, 30), contaminated(rng, 0.030, 30)
    out = ThroughputCheck().evaluate(base, cur)
    assert out.noise > 0.10
    assert out.verdict == REGRESSION
    assert "(the runs' scatter, IQR/median)" in out.reason


def test_throughput_significant_but_small_is_same():
    # Very quiet samples make a 5% shift significant; the tolerance keeps it from failing.
    rng = random.Random(4)
    out = ThroughputCheck().evaluate(noisy(rng, 1.0, 30, 0.005), noisy(rng, 1.05, 30, 0.005))
    assert out.p_value < 1e-6
    assert out.verdict == SAME and "within 10%" in out.reason


def test_throughput_large_but_not_significant_is_same():
    # One run with two slow steps moves the mean, not the distribution: not a regression.
    base = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02, 0.98]
    cur = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 9.0, 9.0]
    out = ThroughputCheck.parse("mean:10%").evaluate(base, cur)
    assert out.change > 1.0
    assert out.verdict == SAME and "not significant" in out.reason


def test_throughput_too_few_samples_is_untested_never_a_regression():
    out = ThroughputCheck().evaluate([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert out.verdict == UNTESTED and not out.fails
    assert "need 7 on each side" in out.reason


def test_throughput_improvement():
    rng = random.Random(5)
    out = ThroughputCheck().evaluate(noisy(rng, 0.02, 20), noisy(rng, 0.01, 20))
    assert out.verdict == IMPROVEMENT


def test_throughput_not_gated_reports_but_does_not_fail():
    rng = random.Random(3)
    out = ThroughputCheck(gated=False).evaluate(noisy(rng, 0.01, 20), noisy(rng, 0.02, 20))
    assert out.verdict == REGRESSION and not out.fails


def test_throughput_no_samples_is_not_available():
    assert ThroughputCheck().evaluate([], [1.0]).verdict == NOT_AVAILABLE


@pytest.mark.parametrize("n, text", [(0, "0 B"), (512, "512 B"), (1536, "1.50 KiB"), (23.4 * 2**20, "23.4 MiB"),
                                     (1000 * 2**20, "1000 MiB"), (4 * 2**30, "4.00 GiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text
