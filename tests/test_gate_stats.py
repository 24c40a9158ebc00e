"""The gate's statistics, as pure functions on synthetic signals (seeded, so deterministic)."""

from __future__ import annotations

import math
import random

import pytest

from accumbench.gate import stats
from gate_helpers import noisy


def test_summarize():
    assert stats.summarize([3.0, 1.0, 2.0, 100.0]) == 2.5
    assert stats.summarize([3.0, 1.0, 2.0], "mean") == 2.0
    assert stats.summarize([3.0, 1.0, 2.0], "min") == 1.0
    with pytest.raises(ValueError, match="no samples"):
        stats.summarize([])
    with pytest.raises(ValueError, match="unknown statistic 'max'"):
        stats.summarize([1.0], "max")


def test_relative_change():
    assert stats.relative_change(100, 110) == pytest.approx(0.10)
    assert stats.relative_change(100, 90) == pytest.approx(-0.10)
    assert stats.relative_change(0, 0) == 0.0
    assert stats.relative_change(0, 5) == math.inf


def test_min_two_sided_p_is_the_no_overlap_value():
    assert stats.min_two_sided_p(3, 3) == pytest.approx(0.1)  # 2 / C(6, 3)
    assert stats.min_two_sided_p(7, 7) == pytest.approx(2 / 3432)
    assert stats.min_two_sided_p(0, 5) == 1.0
    # The bound is attained: completely separated samples give exactly it (exact method).
    assert stats.mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)


def test_samples_needed():
    assert stats.samples_needed(0.002) == 7  # 2/C(12,6) = 0.0022 is not below 0.002
    assert stats.samples_needed(0.05) == 4
    with pytest.raises(ValueError):
        stats.samples_needed(0)


def test_mann_whitney_all_equal_samples_mean_no_evidence():
    assert stats.mann_whitney_p([0.01] * 10, [0.01] * 10) == 1.0


def test_mann_whitney_detects_a_clear_shift():
    rng = random.Random(1)
    assert stats.mann_whitney_p(noisy(rng, 1.0, 20), noisy(rng, 1.3, 20)) < 1e-5


def test_mann_whitney_false_positive_rate_on_identical_distributions():
    # Under the null hypothesis the test fires with probability alpha: 1000 synthetic pairs at
    # alpha 0.002 should fire about twice, and far fewer than 1% of the time.
    rng = random.Random(7)
    fired = sum(
        stats.mann_whitney_p(noisy(rng, 1.0, 20), noisy(rng, 1.0, 20)) < 0.002 for _ in range(1000)
    )
    assert fired <= 8


def test_spread_is_relative_iqr():
    assert stats.spread([1.0]) == 0.0
    assert stats.spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)
