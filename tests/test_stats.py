"""Step-time statistics, throughput ratios with intervals, and adaptive timing on a fake clock."""

from __future__ import annotations

import random

import pytest
import torch

from accumbench.cases import Case
from accumbench.meters.base import WallClockTimer, timed_steps
from accumbench.meters.cpu import CpuMeter
from accumbench.meters.timing import StepPolicy
from accumbench.report.findings import NO_DIFFERENCE, TOO_FEW_STEPS, ratio_text
from accumbench.runner import Runner
from accumbench.stats import StepTimes, throughput_ratio, typical_spread


def sample(mean: float, sd: float, n: int = 30, seed: int = 1) -> StepTimes:
    rng = random.Random(seed)
    return StepTimes([max(1e-6, rng.gauss(mean, sd)) for _ in range(n)])


def test_step_times_summary_is_computed_once_and_right():
    times = StepTimes([0.4, 0.1, 0.3, 0.2, 0.5, 0.6])
    assert times.median == pytest.approx(0.35)
    assert times.quartiles == pytest.approx((0.225, 0.35, 0.475))
    assert times.iqr == pytest.approx(0.25)
    assert times.quantile(0.0) == 0.1 and times.quantile(1.0) == 0.6
    # Six steps: the rank-based 95% interval is (min, max) (coverage 1 - 2/64 = 96.9%).
    assert times.median_ci() == (0.1, 0.6)
    assert StepTimes([0.1] * 5).median_ci() is None  # five cannot give 95%
    assert StepTimes([]).median != StepTimes([]).median  # NaN


def test_identical_distributions_give_no_measurable_difference():
    a, b = sample(1.0, 0.05, seed=1), sample(1.0, 0.05, seed=2)
    ratio = throughput_ratio(a, b)
    assert ratio.known and not ratio.differs and ratio.low < 1 < ratio.high
    text = ratio_text(ratio)
    assert text.startswith(NO_DIFFERENCE) and f"{ratio.value:.2f}×" not in text.split("(")[0]


def test_a_thirty_percent_shift_with_a_tight_spread_is_a_ratio_excluding_one():
    fast, slow = sample(1.0, 0.01, seed=3), sample(1.3, 0.013, seed=4)
    ratio = throughput_ratio(slow, fast)  # slow's samples/s relative to fast's: 1/1.3
    assert ratio.differs and ratio.high < 1
    assert ratio.low <= 1 / 1.3 * 1.02 and ratio.high >= 1 / 1.3 * 0.98
    assert ratio_text(ratio, "of the large batch").startswith("0.77× [")
    assert throughput_ratio(slow, fast) == ratio  # seeded: the same records, the same text


def test_a_median_known_to_worse_than_five_percent_claims_nothing():
    tight, loose = sample(1.0, 0.01, seed=5), sample(1.5, 0.6, n=8, seed=6)
    ratio = throughput_ratio(loose, tight)
    assert ratio.too_noisy is not None and ratio.too_noisy > 0.05 and not ratio.differs
    assert ratio_text(ratio).startswith("too noisy to say (a median step time known to ±")
    # An interval that excludes 1 even so gives the direction, not "too noisy to say" beside it.
    from accumbench.stats import Ratio

    assert ratio_text(Ratio(0.4, 0.31, 0.50, too_noisy=0.175), "of the combined") == (
        "between 0.31× and 0.50× of the combined, imprecisely (a median step time known to ±17.5% only)")


def test_few_steps_say_nothing_and_batches_scale_the_ratio():
    assert ratio_text(throughput_ratio(StepTimes([1, 1.1, 0.9]), StepTimes([1, 1, 1]))) == TOO_FEW_STEPS
    same = StepTimes([0.2] * 8)
    assert throughput_ratio(same, same, batch_a=64, batch_b=32).value == pytest.approx(2.0)
    assert typical_spread([StepTimes([1, 1, 1, 1]), StepTimes([1, 2, 3])]) == pytest.approx(0.25)  # median of 0 and 1/2


class FakeClock:
    """A clock that only moves when a fake step runs: each step takes a drawn duration."""

    def __init__(self, sd: float, seed: int = 0) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.sd = sd

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += max(1e-4, self.rng.gauss(0.01, self.sd))


def test_adaptive_timing_stops_on_the_ci_target_when_quiet():
    clock = FakeClock(sd=0.0002)
    times, reason = timed_steps(WallClockTimer(clock), clock.step,
                                StepPolicy(ci_target=0.02, time_cap_s=10.0))
    assert reason == "ci-target"
    assert 6 <= len(times) < 100 and clock.now < 10.0
    assert StepTimes(times).ci_half_width() <= 0.02


def test_adaptive_timing_stops_at_the_cap_when_noisy():
    clock = FakeClock(sd=0.02)
    times, reason = timed_steps(WallClockTimer(clock), clock.step,
                                StepPolicy(ci_target=0.001, time_cap_s=1.0))
    assert reason == "time-cap"
    assert 1.0 <= clock.now < 1.6  # stops at the cap, overshooting by at most one chunk
    assert StepTimes(times).ci_half_width() > 0.001


def test_the_cap_counts_timed_steps_not_a_one_off_cost_between_them():
    # The first interval imports scipy (seconds on a loaded machine): counted against the
    # cap, it cut the first case of every run to its first 6 steps.
    import time

    from accumbench.meters.timing import time_with_policy

    rng = random.Random(0)
    calls = []

    def time_steps(n):
        if not calls:
            time.sleep(0.1)  # twice the cap, outside the steps
        calls.append(n)
        return tuple(rng.uniform(0.0009, 0.0011) for _ in range(n))

    times, reason = time_with_policy(time_steps, StepPolicy(ci_target=1e-6, time_cap_s=0.05))
    assert reason == "time-cap" and len(calls) > 1
    assert 0.05 <= sum(times) < 0.05 * 1.6 and len(times) >= 45


def test_a_fixed_count_times_exactly_that_many():
    clock = FakeClock(sd=0.02)
    times, reason = timed_steps(WallClockTimer(clock), clock.step, StepPolicy.fixed(7))
    assert (len(times), reason) == (7, "fixed")
    assert StepPolicy.fixed(7).setting == "7"
    assert StepPolicy(ci_target=0.02, time_cap_s=1.5).setting == "adaptive:0.02:1.5s"


def test_the_runner_records_the_policy_the_interval_and_why_it_stopped():
    clock = FakeClock(sd=0.0001)
    meter = CpuMeter(timer=WallClockTimer(clock))
    runner = Runner(torch.device("cpu"), meter=meter, timing=StepPolicy(ci_target=0.05, time_cap_s=5.0))
    adaptive, fixed = (runner.measure(Case("mlp", "large-batch", 2, options=(("size", "tiny"),),
                                           warmup=1, steps=steps)) for steps in (None, 4))
    # The real steps do not move the fake clock: every timed step reads as 0 s, a tight median.
    assert adaptive.stop_reason == "ci-target" and adaptive.steps_setting == "adaptive:0.05:5s"
    assert adaptive.measured_steps == len(adaptive.step_times_s) >= 6
    assert adaptive.median_step_time_ci_s is not None
    assert (fixed.stop_reason, fixed.steps_setting, fixed.measured_steps) == ("fixed", "4", 4)
    assert fixed.median_step_time_ci_s is None  # 4 steps: no 95% interval
    # Timing never touches memory: the same peak either way.
    assert adaptive.peak_allocated == fixed.peak_allocated


def test_drift_widens_the_interval_on_both_sides_and_can_make_a_difference_unmeasurable():
    from accumbench.stats import StepTimes, throughput_ratio

    fast = StepTimes(tuple(0.100 + 0.001 * (i % 5) for i in range(30)))
    slow = StepTimes(tuple(0.110 + 0.001 * (i % 5) for i in range(30)))
    tight = throughput_ratio(fast, slow)
    assert tight.low > 1  # ~1.10x, tight: the bootstrap alone excludes 1
    wide = throughput_ratio(fast, slow, drift=0.10)
    assert wide.value == tight.value
    assert wide.low == pytest.approx(tight.low / 1.10) and wide.high == pytest.approx(tight.high * 1.10)
    assert wide.low < 1 < wide.high  # a 10% drift allowance swallows a 10% difference
