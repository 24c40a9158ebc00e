"""The memory line fit that `report` draws and `plan` extrapolates."""

from __future__ import annotations

import math

import pytest

from accumbench.fit import MemoryFit, fit_memory_line


def test_recovers_an_exact_line():
    micro = [1, 2, 4, 8, 16]
    peaks = [4_000_000 + 300_000 * m for m in micro]
    slope, intercept, r2, points = fit_memory_line(micro, peaks)
    assert slope == pytest.approx(300_000)
    assert intercept == pytest.approx(4_000_000)
    assert r2 == pytest.approx(1.0)


def test_least_squares_on_noisy_points_matches_the_closed_form():
    # Points (0, 1), (1, 3), (2, 2): slope 0.5, intercept 1.5, r2 = 0.25 by hand.
    fit = fit_memory_line([0, 1, 2], [1, 3, 2])
    assert fit.bytes_per_sample == pytest.approx(0.5)
    assert fit.intercept_bytes == pytest.approx(1.5)
    assert fit.r2 == pytest.approx(0.25)


def test_flat_peaks_are_a_perfect_flat_fit_not_a_division_by_zero():
    fit = fit_memory_line([2, 4, 8], [1000, 1000, 1000])
    assert fit == MemoryFit(0.0, 1000.0, 1.0, 3)


def test_predict_extrapolates_the_line():
    fit = fit_memory_line([8, 16], [5 << 30, 7 << 30])
    assert fit.predict(32) == pytest.approx(11 << 30)
    assert fit.predict(0) == pytest.approx(3 << 30)


@pytest.mark.parametrize(
    "micro, peaks, message",
    [
        ([8], [100], "two distinct"),
        ([8, 8, 8], [100, 110, 120], "two distinct"),
        ([1, 2], [100], "2 micro-batch sizes but 1 peaks"),
        ([1, 2], [100, math.nan], "finite"),
    ],
)
def test_refuses_what_does_not_determine_a_line(micro, peaks, message):
    with pytest.raises(ValueError, match=message):
        fit_memory_line(micro, peaks)


def test_a_line_through_two_points_states_no_r2():
    # Two points always lie on their line: r² = 1 says nothing, so people are told the count.
    two = fit_memory_line([8, 16], [5 << 30, 7 << 30])
    assert two.points == 2 and "r²" not in two.quality() and "by construction" in two.quality()
    three = fit_memory_line([1, 2, 4], [110, 120, 150])
    assert three.quality().startswith("r² 0.9") and three.quality().endswith("3 points")
