"""Step times as one value: median, quartiles, IQR and the median's confidence interval, computed
once (as `torch.utils.benchmark`'s `Measurement` does); and the ratio of two throughputs with its
interval.

Every throughput the project states comes from here:
- `StepTimes(times).median` is the step time a rate is computed from (robust to the odd slow step);
- `StepTimes.median_ci()` is a rank-based (binomial order-statistic) 95% interval of that median,
  from `scipy.stats.quantile_test`: it needs no distribution and exists from 6 steps on;
- `throughput_ratio(a, b)` is `(batch_a / median_a) / (batch_b / median_b)` with a percentile
  bootstrap interval over both samples' step times (seeded: the same records give the same text).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

CONFIDENCE = 0.95
# The rank-based 95% interval of a median needs 6 samples: with 5, even (min, max) covers the
# median with only 1 - 2/2^5 = 94% probability.
MIN_STEPS_FOR_CI = 6
# Bootstrap: enough resamples for stable 2.5%/97.5% percentiles; a fixed seed makes reports
# reproducible from the same records.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# A ratio from fewer steps than this on either side is "too few steps to say": a percentile
# bootstrap of a median from 5 or fewer samples covers far less than it claims.
MIN_STEPS_FOR_RATIO = MIN_STEPS_FOR_CI
# A ratio is claimed only when both medians are known to within +-5% (95% CI half-width). On a
# machine whose load drifts between cases (a shared 2-core VM), a bootstrap of each case's own
# steps cannot see that drift; three smoke runs at load 15+ gave non-overlapping intervals for the
# same comparison while every median was known to +-10-50% only. Wider medians say "too noisy".
MAX_HALF_WIDTH_FOR_CLAIM = 0.05


@dataclass(frozen=True)
class StepTimes:
    """One case's step durations (seconds) and their summary statistics, computed once."""

    times: tuple[float, ...]

    def __init__(self, times: Sequence[float]) -> None:
        object.__setattr__(self, "times", tuple(float(t) for t in times))

    def __len__(self) -> int:
        return len(self.times)

    @cached_property
    def median(self) -> float:
        """The median step time; NaN without steps."""
        return statistics.median(self.times) if self.times else math.nan

    @cached_property
    def quartiles(self) -> tuple[float, float, float]:
        """(first quartile, median, third quartile), inclusive method; NaN without steps."""
        if not self.times:
            return math.nan, math.nan, math.nan
        if len(self.times) == 1:
            return self.times[0], self.times[0], self.times[0]
        q1, q2, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return q1, q2, q3

    def quantile(self, p: float) -> float:
        """The `p` quantile (0..1), linear interpolation between order statistics."""
        if not self.times:
            return math.nan
        import numpy as np

        return float(np.quantile(self.times, p))

    @property
    def iqr(self) -> float:
        """Interquartile range in seconds."""
        q1, _, q3 = self.quartiles
        return q3 - q1

    @property
    def relative_iqr(self) -> float:
        """IQR / median: how noisy the steps were (0 for one step or a zero median)."""
        if len(self.times) < 2 or not self.median:
            return 0.0
        return self.iqr / self.median

    @cached_property
    def _ci(self) -> tuple[float, float] | None:
        if len(self.times) < MIN_STEPS_FOR_CI:
            return None
        if len(set(self.times)) == 1:
            return self.times[0], self.times[0]
        from scipy.stats import quantile_test  # lazy: scipy costs a second to import

        ci = quantile_test(self.times, q=self.median, p=0.5).confidence_interval(CONFIDENCE)
        low, high = float(ci.low), float(ci.high)
        if math.isnan(low) or math.isnan(high):
            return None
        return low, high

    def median_ci(self) -> tuple[float, float] | None:
        """Rank-based 95% confidence interval (seconds) of the median; None below 6 steps."""
        return self._ci

    def ci_half_width(self) -> float | None:
        """Half the median's 95% interval as a share of the median (0.02 = +-2%); None when
        the interval does not exist."""
        ci = self._ci
        if ci is None:
            return None
        if ci[1] == ci[0]:
            return 0.0  # every step the same (a coarse or fake clock): the median is exact
        if not self.median:
            return None
        return (ci[1] - ci[0]) / 2 / self.median


@dataclass(frozen=True)
class Ratio:
    """A throughput ratio `a / b` and its 95% interval (None when too few steps to say)."""

    value: float
    low: float | None = None
    high: float | None = None
    # Set when a side's median is known less precisely than `MAX_HALF_WIDTH_FOR_CLAIM`: the
    # larger of the two half-widths (share of the median); the ratio then claims nothing.
    too_noisy: float | None = None

    @property
    def known(self) -> bool:
        """True when there is an interval to judge the ratio by."""
        return self.low is not None and self.high is not None

    @property
    def differs(self) -> bool:
        """True when the interval excludes 1 and both medians were precise enough to say so."""
        return self.known and self.too_noisy is None and not (self.low <= 1.0 <= self.high)


def throughput_ratio(a: StepTimes, b: StepTimes, batch_a: float = 1.0, batch_b: float = 1.0,
                     seed: int = BOOTSTRAP_SEED, drift: float = 0.0) -> Ratio | None:
    """Throughput of `a` relative to `b`: `(batch_a / median a) / (batch_b / median b)`.

    The interval is the 2.5-97.5% percentile bootstrap of that ratio, resampling each case's
    step times independently (`scipy.stats.bootstrap`, seeded), then widened by `drift` on
    each side (low / (1 + drift), high * (1 + drift)). Resampling a case's own steps cannot
    see the machine change between the two cases, which were measured at different times;
    `drift` is that allowance (the report passes its section's typical spread: three smoke
    runs on a shared 2-core VM moved ratios by 5-10% between runs while each run's bootstrap
    interval was +-2-3%). None when either median is missing or zero; an interval-less
    `Ratio` when either side has under 6 steps; `too_noisy` set when either median's 95% CI
    is wider than +-5%.
    """
    if not (a.median > 0 and b.median > 0):
        return None
    value = (batch_a / a.median) / (batch_b / b.median)
    if len(a) < MIN_STEPS_FOR_RATIO or len(b) < MIN_STEPS_FOR_RATIO:
        return Ratio(value)
    if len(set(a.times)) == 1 and len(set(b.times)) == 1:
        return Ratio(value, value / (1 + drift), value * (1 + drift))
    widths = [w for w in (a.ci_half_width(), b.ci_half_width()) if w is not None]
    noisy = max(widths) if widths and max(widths) > MAX_HALF_WIDTH_FOR_CLAIM else None
    import numpy as np
    from scipy.stats import bootstrap

    def statistic(x, y, axis=-1):
        return (batch_a / np.median(x, axis=axis)) / (batch_b / np.median(y, axis=axis))

    result = bootstrap((np.asarray(a.times), np.asarray(b.times)), statistic, vectorized=True,
                       paired=False, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE,
                       method="percentile", rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return Ratio(value)
    return Ratio(value, min(low, value) / (1 + drift), max(high, value) * (1 + drift), noisy)


def typical_spread(samples: Sequence[StepTimes]) -> float | None:
    """The median over cases of IQR / median: how noisy a machine was; None without cases
    that have at least two steps."""
    spreads = [s.relative_iqr for s in samples if len(s) >= 2 and s.median > 0]
    return statistics.median(spreads) if spreads else None


__all__ = ["CONFIDENCE", "MIN_STEPS_FOR_CI", "Ratio", "StepTimes", "throughput_ratio",
           "typical_spread"]
