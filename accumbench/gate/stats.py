"""Pure statistics for the throughput gate: functions of sample lists, no I/O, no state.

Step times are noisy and not normally distributed (a few slow outliers per run are the rule), so
the gate compares whole samples with a rank test, Mann-Whitney U (as asv does), and quotes
medians, which one outlier cannot move.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from accumbench.stats import StepTimes

STATISTICS = ("median", "mean", "min")


def summarize(samples: Sequence[float], stat: str = "median") -> float:
    """The `stat` ("median", "mean" or "min") of a non-empty sample."""
    if not samples:
        raise ValueError("no samples")
    if stat == "median":
        return StepTimes(samples).median
    if stat == "mean":
        return statistics.fmean(samples)
    if stat == "min":
        return min(samples)
    raise ValueError(f"unknown statistic {stat!r}; use one of {', '.join(STATISTICS)}")


def relative_change(baseline: float, current: float) -> float:
    """`current / baseline - 1`: +0.1 means 10% more. Infinite when the baseline is 0 and the
    current is not (0 to 0 is no change)."""
    if baseline == 0:
        return 0.0 if current == 0 else math.copysign(math.inf, current)
    return current / baseline - 1.0


def mann_whitney_p(baseline: Sequence[float], current: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value that the two samples come from the same distribution.

    scipy picks the exact distribution for small samples without ties and the normal
    approximation (tie-corrected) otherwise. Samples that are all equal (a fake clock, a timer
    too coarse for the step) carry no evidence of a difference: p = 1.
    """
    if not baseline or not current:
        raise ValueError("Mann-Whitney U needs at least one sample on each side")
    if len(set(baseline) | set(current)) == 1:
        return 1.0
    from scipy.stats import mannwhitneyu  # lazy: scipy costs a second to import

    p = float(mannwhitneyu(baseline, current, alternative="two-sided").pvalue)
    # scipy returns nan when every value ties across both samples in some code paths.
    return 1.0 if math.isnan(p) else p


def min_two_sided_p(n_baseline: int, n_current: int) -> float:
    """The smallest two-sided p-value Mann-Whitney U can give for these sample sizes.

    It is reached when the samples do not overlap at all: 2 / C(n1 + n2, n1). With 3 step times
    on each side that is 0.1, so a strict level like 0.002 can never be reached: the test cannot
    decide and the gate must say so rather than pretend.
    """
    if n_baseline < 1 or n_current < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n_baseline + n_current, n_baseline))


def samples_needed(alpha: float) -> int:
    """The smallest n such that n samples on each side can reach a two-sided p below `alpha`."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    n = 1
    while min_two_sided_p(n, n) >= alpha:
        n += 1
    return n


def spread(samples: Sequence[float]) -> float:
    """Relative interquartile range, IQR / median: how noisy one run is (0 for a single sample)."""
    return StepTimes(samples).relative_iqr

