"""Regression checks as tiny strategy objects parsed from strings (pytest-benchmark style).

- `Tolerance.parse("0.5%")`, `Tolerance.parse("1MiB")`, `Tolerance.parse("0")`: how much more
  memory is still fine, relative to the baseline or in bytes.
- `ThroughputCheck.parse("10%")` or `ThroughputCheck.parse("median:10%")`: how much slower the
  step-time statistic may get, and the significance level the rank test must reach as well.

Each check's `evaluate(baseline, current)` returns an `Outcome`: a verdict plus the numbers and a
one-line reason that names what decided.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from accumbench.gate import stats
from accumbench.textfmt import format_bytes, is_fractional_bare_number, parse_size

SAME = "same"
REGRESSION = "regression"
IMPROVEMENT = "improvement"
UNTESTED = "untested"  # the data cannot decide (too few samples): never gated
UNRESOLVED = "unresolved"  # beyond the tolerance but within the runs' own scatter: never gated
NOT_AVAILABLE = "n/a"  # nothing to compare (no step times, a side not ok)

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


@dataclass(frozen=True)
class Outcome:
    """What one check found for one case.

    `baseline`/`current` are the compared values (bytes, or seconds of the step-time statistic),
    `change` is `current / baseline - 1`, `p_value` is the rank test's when one ran, `noise`
    the runs' scatter the change had to exceed, and `gated` says whether a regression here fails
    the run.
    """

    verdict: str
    reason: str
    baseline: float | None = None
    current: float | None = None
    change: float | None = None
    p_value: float | None = None
    gated: bool = True
    noise: float | None = None  # throughput: the larger within-run IQR / median

    @property
    def fails(self) -> bool:
        """True when this outcome alone makes the gate fail."""
        return self.verdict == REGRESSION and self.gated


@dataclass(frozen=True)
class Tolerance:
    """How much worse is still fine: a fraction of the baseline (`relative`) or an amount."""

    amount: float
    relative: bool
    text: str

    @classmethod
    def parse(cls, text: str | float) -> "Tolerance":
        """Parse "0.5%" (relative), "0" or "4096" (bytes), "64KiB", "1MiB", "1.5GB".

        Raises ValueError with the accepted forms on anything else, including negative values.
        """
        raw = str(text).strip()
        percent = re.fullmatch(_NUMBER + r"\s*%", raw)
        if percent:
            return cls(float(percent.group(1)) / 100.0, True, raw)
        if is_fractional_bare_number(raw):
            # '0.5' read as bytes rounds to 0: surely a percentage without its '%'.
            raise ValueError(f"{raw!r} is ambiguous: give '{raw}%' or a whole number of bytes (or a size such as "
                             "'64KiB')")
        try:
            return cls(float(parse_size(raw)), False, raw)
        except ValueError:
            pass
        raise ValueError(
            f"cannot read tolerance {raw!r}: use a percentage like '0.5%' or an amount of bytes "
            "like '0', '4096', '64KiB', '1MiB'"
        )

    def allowance(self, baseline: float) -> float:
        """The largest increase over `baseline` that is still within tolerance."""
        return self.amount * abs(baseline) if self.relative else self.amount

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class MemoryCheck:
    """Peak memory may not grow by more than the tolerance; it repeats to the byte on the same
    device and torch, so the default is tight (0.5%)."""

    tolerance: Tolerance

    @classmethod
    def parse(cls, text: str) -> "MemoryCheck":
        """A memory check from a tolerance string such as "0.5%" or "1MiB"."""
        return cls(Tolerance.parse(text))

    def describe(self) -> str:
        """One line for the report header."""
        return f"a case fails when its peak_allocated grows by more than {self.tolerance}"

    def evaluate(self, baseline: float | None, current: float | None) -> Outcome:
        """Compare two peaks in bytes: more than the allowance up is a regression, as much down
        an improvement."""
        if baseline is None or current is None:
            return Outcome(NOT_AVAILABLE, "no peak on one side", baseline, current)
        change = stats.relative_change(baseline, current)
        delta = current - baseline
        allowance = self.tolerance.allowance(baseline)
        if delta > allowance:
            verdict, word = REGRESSION, "exceeds"
        elif -delta > allowance:
            verdict, word = IMPROVEMENT, "beyond"
        else:
            verdict, word = SAME, "within"
        reason = f"peak {_signed_bytes(delta)} ({_signed_percent(change)}) {word} tolerance {self.tolerance}"
        return Outcome(verdict, reason, baseline, current, change)


@dataclass(frozen=True)
class ThroughputCheck:
    """A slowdown counts only when it is significant, larger than the tolerance, and larger
    than the runs' own scatter.

    - Significant: a two-sided Mann-Whitney U test on the per-step times gives p < `alpha`.
    - Large: the step-time `stat` (median by default) grew by more than `tolerance`.
    - Resolved: it also grew by more than either run's scatter, IQR / median of its step times.

    Each alone fires on noise. The rank test treats the steps of one run as independent, but
    they share the run's conditions (clock, neighbours, cache), so two runs of the same code
    differ "significantly" by a few percent. The median alone moves with a run that a busy
    neighbour process slowed in part. Such runs show it: their step times scatter widely (an
    IQR of 30-300% of the median where a quiet run has a few percent), and a shift smaller than
    that scatter is not resolved by one run per side. What no statistic of one run per side can
    tell from a slowdown is a neighbour that slows a whole run evenly: gate throughput on a
    machine of its own. With `gated=False` the verdict is reported but never fails the run (CI
    machines that differ from the baseline's).
    """

    tolerance: float = 0.10
    stat: str = "median"
    alpha: float = 0.002
    gated: bool = True

    def __post_init__(self) -> None:
        if self.stat not in stats.STATISTICS:
            raise ValueError(f"unknown statistic {self.stat!r}; use one of {', '.join(stats.STATISTICS)}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"the significance level must be in (0, 1), got {self.alpha!r}")
        if not 0 <= self.tolerance < math.inf:
            raise ValueError(f"the throughput tolerance must be a non-negative fraction, got {self.tolerance!r}")

    @classmethod
    def parse(cls, text: str, alpha: float = 0.002, gated: bool = True) -> "ThroughputCheck":
        """Parse "10%" or "STAT:10%" with STAT one of median, mean, min."""
        raw = str(text).strip()
        stat, _, amount = raw.rpartition(":")
        stat = stat.strip().lower() or "median"
        tolerance = Tolerance.parse(amount)
        if not tolerance.relative:
            raise ValueError(f"cannot read throughput tolerance {raw!r}: use a percentage like '10%' or 'median:10%'")
        return cls(tolerance.amount, stat, alpha, gated)

    def describe(self) -> str:
        """One line for the report header."""
        rule = (
            f"{self.stat} step time grows by more than {self.tolerance:.0%} and more than the runs' "
            f"scatter (IQR/median), and a two-sided Mann-Whitney U test gives p < {self.alpha:g}"
        )
        if self.gated:
            return f"a case fails when its {rule}"
        return f"reported only, never fails (a case is flagged when its {rule})"

    def evaluate(self, baseline: Sequence[float], current: Sequence[float]) -> Outcome:
        """Compare two samples of step times in seconds."""
        if not baseline or not current:
            return Outcome(NOT_AVAILABLE, "no step times on one side", gated=self.gated)
        base = stats.summarize(baseline, self.stat)
        cur = stats.summarize(current, self.stat)
        change = stats.relative_change(base, cur)
        what = f"{self.stat} step time {_signed_percent(change)}"
        if stats.min_two_sided_p(len(baseline), len(current)) >= self.alpha:
            need = stats.samples_needed(self.alpha)
            return Outcome(
                UNTESTED,
                f"{what}; {len(baseline)} vs {len(current)} step times cannot reach p < {self.alpha:g} "
                f"(need {need} on each side): not tested",
                base, cur, change, None, self.gated,
            )
        p = stats.mann_whitney_p(baseline, current)
        noise = max(stats.spread(baseline), stats.spread(current))
        threshold = max(self.tolerance, noise)
        test = f"Mann-Whitney U p={p:.2g}"
        if threshold > self.tolerance:
            bound = f"{threshold:.0%} (the runs' scatter, IQR/median)"
        else:
            bound = f"{self.tolerance:.0%}"
        if p >= self.alpha:
            verdict, reason = SAME, f"{what}, not significant ({test} >= {self.alpha:g})"
        elif change > threshold:
            verdict, reason = REGRESSION, f"{what} > {bound} and {test} < {self.alpha:g}"
        elif change < -threshold:
            verdict, reason = IMPROVEMENT, f"{what} beyond -{bound} and {test} < {self.alpha:g}"
        elif abs(change) > self.tolerance:
            verdict, reason = UNRESOLVED, (
                f"{what} is within the runs' own scatter (IQR {noise:.0%} of the median; {test}): "
                "not resolved by one run per side, re-run on a quieter machine"
            )
        else:
            verdict, reason = SAME, f"{what} is within {self.tolerance:.0%} ({test})"
        return Outcome(verdict, reason, base, cur, change, p, self.gated, noise)


@dataclass(frozen=True)
class EquivalenceCheck:
    """Gradient equivalence (records of `accumbench check`) may not get worse.

    A regression when the verdict goes from equivalent to not, when an explained difference
    loses its explanation, or when the relative error grows past `max(tolerance, growth x
    baseline error)`: a BatchNorm model stays "not equivalent" at 30%, but 60% is news.
    """

    growth: float = 2.0

    def evaluate(self, baseline: dict | None, current: dict | None) -> Outcome:
        """Compare two `equivalence` blocks."""
        if not isinstance(baseline, dict) or not isinstance(current, dict):
            return Outcome(NOT_AVAILABLE, "no equivalence result on one side")
        b_err, c_err = baseline.get("rel_error"), current.get("rel_error")
        if not isinstance(b_err, (int, float)) or not isinstance(c_err, (int, float)):
            return Outcome(NOT_AVAILABLE, "no relative error on one side")
        tolerance = float(current.get("tolerance") or baseline.get("tolerance") or 0.0)
        change = stats.relative_change(b_err, c_err) if b_err else (math.inf if c_err else 0.0)
        what = f"gradient error {b_err:.2g} -> {c_err:.2g}"
        b_ok, c_ok = baseline.get("verdict") == "equivalent", current.get("verdict") == "equivalent"
        if b_ok and not c_ok:
            return Outcome(REGRESSION, f"{what}: was equivalent, now not (tolerance {tolerance:g})",
                           b_err, c_err, change)
        if baseline.get("explained") and current.get("explained") is False:
            return Outcome(REGRESSION, f"{what}: the difference is no longer explained by a known cause",
                           b_err, c_err, change)
        if c_err > max(tolerance, self.growth * b_err):
            return Outcome(REGRESSION, f"{what}: grew more than {self.growth:g}x", b_err, c_err, change)
        if c_ok and not b_ok:
            return Outcome(IMPROVEMENT, f"{what}: now equivalent", b_err, c_err, change)
        return Outcome(SAME, f"{what}: {'equivalent' if c_ok else 'not equivalent, as before'}",
                       b_err, c_err, change)


@dataclass(frozen=True)
class CommunicationCheck:
    """DDP gradient all-reduces per optimizer step (records of `run --nproc-per-node`) may not
    grow. The count is deterministic (DDP buckets x synchronised micro-steps), so any growth is
    real: no_sync() lost on the non-final micro-steps, or the gradients split into more buckets.
    Their time is not gated: it is as noisy as the step time, which the throughput check gates."""

    def evaluate(self, baseline: dict | None, current: dict | None) -> Outcome:
        """Compare two `distributed` blocks."""
        if any(isinstance(x, dict) and x.get("parallel") == "fsdp" for x in (baseline, current)):
            return self._fsdp(baseline, current)
        b = baseline.get("allreduces_per_step") if isinstance(baseline, dict) else None
        c = current.get("allreduces_per_step") if isinstance(current, dict) else None
        if not isinstance(b, (int, float)) or not isinstance(c, (int, float)):
            return Outcome(NOT_AVAILABLE, "no all-reduce count on one side")
        change = stats.relative_change(b, c) if b else (math.inf if c else 0.0)
        what = f"gradient all-reduces per optimizer step {b:g} -> {c:g}"
        if c > b:
            buckets = (baseline.get("buckets"), current.get("buckets"))
            cause = (f" (DDP buckets {buckets[0]} -> {buckets[1]})" if buckets[0] != buckets[1]
                     else " (same buckets: more synchronised micro-steps; is no_sync() still used?)")
            return Outcome(REGRESSION, what + cause, b, c, change)
        if c < b:
            return Outcome(IMPROVEMENT, what, b, c, change)
        return Outcome(SAME, what, b, c, change)


    @staticmethod
    def _fsdp(baseline: dict | None, current: dict | None) -> Outcome:
        """FSDP: all-gathers and reduce-scatters per optimizer step, gated exactly (FSDP units x
        gathers or synchronised micro-steps: deterministic). A change of either is a regression
        when it grows, an improvement when it shrinks; the outcome's numbers are the collectives
        in all (more in one and fewer in the other is a regression, named)."""
        keys = ("allgathers_per_step", "reducescatters_per_step")
        pairs = [(baseline.get(k) if isinstance(baseline, dict) else None,
                  current.get(k) if isinstance(current, dict) else None) for k in keys]
        if any(not isinstance(v, (int, float)) for pair in pairs for v in pair):
            return Outcome(NOT_AVAILABLE, "no FSDP collective counts on one side")
        b, c = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        change = stats.relative_change(b, c) if b else (math.inf if c else 0.0)
        what = "; ".join(f"{k.split('_')[0]} per optimizer step {x:g} -> {y:g}" for k, (x, y) in zip(keys, pairs))
        if any(y > x for x, y in pairs):
            units = (baseline.get("fsdp_units"), current.get("fsdp_units"))
            cause = (f" (FSDP units {units[0]} -> {units[1]})" if units[0] != units[1] else
                     " (same FSDP units: is the gradient sync still skipped, resharding unchanged?)")
            return Outcome(REGRESSION, what + cause, b, c, change)
        if any(y < x for x, y in pairs):
            return Outcome(IMPROVEMENT, what, b, c, change)
        return Outcome(SAME, what, b, c, change)


def _signed_percent(change: float) -> str:
    if change == 0:
        return "±0%"
    if math.isinf(change):
        return "+inf%" if change > 0 else "-inf%"
    return f"{change:+.2%}"


def _signed_bytes(delta: float) -> str:
    if delta == 0:
        return "±0 B"
    sign = "+" if delta > 0 else "-"
    return sign + format_bytes(abs(delta))


