"""Plan an effective batch: which micro-batch x accumulation steps fit a memory budget, and which
is fastest.

Pure functions over observations (measured records, or estimates made on the spot):

1. Candidates are the pairs (m, N/m) for every divisor m of the effective batch N; m = N is the
   large batch (one micro-step), the others accumulate.
2. Each candidate's peak is predicted: the observation at that micro-batch when there is one
   (accumulated peaks do not depend on N), else the straight line `fit_memory_line` fits through
   the observations of the same kind (one micro-step, or accumulating). An OOM at a micro-batch
   (measured, or an estimate above the device's usable memory) rules out that micro-batch and
   every larger one of the same kind, whatever the budget (a one-step OOM also rules out
   accumulating at that micro-batch and above: accumulating holds more).
3. A candidate fits when its predicted peak is at most the budget less a safety margin (10% by
   default: fragmentation, other processes, what the prediction cannot see).
4. Throughput: samples/s measured (or predicted by the estimate meter's step-time model) for
   that pair, else borrowed from the same micro-batch with another N (the per-sample rate
   depends mostly on the micro-batch, not on N), and labelled so: "measured", "estimated",
   "from mb=1 x16", or nothing when unknown. Candidates are ranked by samples/s; each says how
   much slower than the fastest fitting one it is (the cost of accumulating), with an interval
   where one can be given (`speed_ratio`): for two measured pairs the bootstrap interval of
   their throughput ratio (`stats.throughput_ratio`, widened by the observations' typical
   spread as the report widens its ratios), for two predicted ones the step-time model's own
   error on such ratios (`speed_ratio_error`, from its held-out validation). A ratio whose
   interval holds 1 is reported as no measurable difference, not as a ranking. The
   recommendation is the fastest candidate that fits (and says so when the runner-up cannot be
   told from it); with no throughput known it is the largest micro-batch that fits, because
   larger micro-batches keep the GPU busier (fewer, larger kernels; one optimizer step per N
   micro-steps either way).

Candidates carry a `variant` (empty today): a further dimension such as a memory lever
(checkpointing, freezing), matched against observations of the same variant.

A plan never recommends a candidate whose predicted peak exceeds the usable budget; when none
fits, `NothingFits` says what the smallest one needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from accumbench.fit import MIN_POINTS_FOR_R2, MemoryFit, fit_memory_line
from accumbench.stats import Ratio, StepTimes, throughput_ratio, typical_spread
from accumbench.textfmt import format_bytes, text_table

DEFAULT_MARGIN = 0.10
SINGLE, ACCUMULATED = "one micro-step", "accumulating"


class PlanError(ValueError):
    """Input a plan cannot be made from; the message is one line for the user."""


class NothingFits(PlanError):
    """No candidate fits the budget; the message says what the smallest one needs, and `plan`
    holds the candidates with no recommendation (for --json)."""

    def __init__(self, message: str, plan: "Plan | None" = None) -> None:
        super().__init__(message)
        self.plan = plan


@dataclass(frozen=True)
class Observation:
    """One measured or estimated case: its shape, status, peak (bytes) and throughput."""

    micro_batch: int
    accum_steps: int
    status: str
    peak_allocated: int | None
    samples_per_s: float | None = None
    parameters: int | None = None
    speed_predicted: bool = False  # samples/s from the estimate meter's step-time model
    variant: str = ""
    step_times: tuple[float, ...] = ()  # measured step times (s); empty for estimates
    # For a predicted speed: the factor a predicted throughput ratio of two configurations may be
    # off by (the device kind's `speed_ratio_error`); None when unknown or measured.
    speed_error: float | None = None

    @property
    def kind(self) -> str:
        """One micro-step (accumulation 1) or accumulating: their peaks follow different lines."""
        return SINGLE if self.accum_steps == 1 else ACCUMULATED

    @property
    def speed_source(self) -> str | None:
        """'measured' or 'estimated' as for a `Candidate` (None without samples/s), so that
        `speed_ratio` compares two observations as it compares two candidates."""
        if not self.samples_per_s:
            return None
        return "estimated" if self.speed_predicted else "measured"


@dataclass(frozen=True)
class Candidate:
    """One (micro-batch, accumulation steps) pair of the effective batch, with its predictions."""

    micro_batch: int
    accum_steps: int
    predicted_peak: int | None
    peak_source: str  # "measured", "estimated", "measured at 4x32", "fit", "fit + gradients", "measured OOM",
    # "estimated, OOM" (a peak above the device's memory), "unknown"
    samples_per_s: float | None
    speed_source: str | None  # "measured", "estimated", "from mb=M xN" (borrowed), None: unknown
    fits: bool
    variant: str = ""  # a further dimension (e.g. a memory lever); "" for the plain step
    step_times: tuple[float, ...] = ()  # the measured step times behind a "measured" speed
    speed_error: float | None = None  # an "estimated" speed's ratio error factor (Observation)

    @property
    def kind(self) -> str:
        """One micro-step (accumulation 1) or accumulating."""
        return SINGLE if self.accum_steps == 1 else ACCUMULATED

    @property
    def label(self) -> str:
        """'8x32' (micro-batch x accumulation steps), with the variant when there is one."""
        return f"{self.micro_batch}x{self.accum_steps}" + (f" {self.variant}" if self.variant else "")


@dataclass(frozen=True)
class Plan:
    """The candidates of an effective batch under a budget, and the recommendation (None only
    in a `NothingFits`'s plan)."""

    effective_batch: int
    budget_bytes: int
    margin: float
    candidates: tuple[Candidate, ...]
    recommended: Candidate | None
    reason: str
    lines: dict[str, MemoryFit] = field(default_factory=dict)
    source: str = ""
    workload: str = ""
    drift: float = 0.0  # the measured observations' typical spread (widens measured ratios)

    @property
    def usable_bytes(self) -> int:
        """The budget less the safety margin: what a candidate's peak must not exceed."""
        return usable(self.budget_bytes, self.margin)

    def ranked(self) -> list[Candidate]:
        """Candidates by samples/s, fastest first; those with no throughput last, by micro-batch."""
        return sorted(self.candidates, key=lambda c: (c.samples_per_s is None, -(c.samples_per_s or 0.0),
                                                      -c.micro_batch))

    def slowdown(self, candidate: Candidate) -> float | None:
        """How many times slower than the recommendation a candidate runs (None: unknown)."""
        best = self.recommended.samples_per_s if self.recommended else None
        if not best or not candidate.samples_per_s:
            return None
        return best / candidate.samples_per_s

    def speed_ratio(self, candidate: Candidate) -> Ratio | None:
        """The recommendation's samples/s over the candidate's, with its interval where one can
        be given (see `speed_ratio`)."""
        return speed_ratio(self.recommended, candidate, self.drift) if self.recommended else None


def speed_ratio(a: Candidate | Observation, b: Candidate | Observation, drift: float = 0.0) -> Ratio | None:
    """`a`'s samples/s over `b`'s (both of one effective batch), with a 95% interval when both
    speeds are measured for their own pair with enough steps (`stats.throughput_ratio`, widened
    by `drift`) or both predicted with a known model error (the ratio times and divided by the
    larger `speed_error`); without one otherwise (a borrowed speed, or one of each kind). None
    when either speed is unknown."""
    if not a.samples_per_s or not b.samples_per_s:
        return None
    value = a.samples_per_s / b.samples_per_s
    if a.speed_source == b.speed_source == "measured" and a.step_times and b.step_times:
        # Same effective batch on both sides: the ratio of samples/s is that of the medians.
        measured = throughput_ratio(StepTimes(a.step_times), StepTimes(b.step_times), drift=drift)
        if measured is not None:
            return measured
    if a.speed_source == b.speed_source == "estimated" and a.speed_error and b.speed_error:
        error = max(a.speed_error, b.speed_error)
        return Ratio(value, value / error, value * error)
    return Ratio(value)


def usable(budget_bytes: int, margin: float) -> int:
    """Budget less the safety margin, in bytes."""
    return int(budget_bytes * (1.0 - margin))


def divisor_pairs(effective_batch: int) -> list[tuple[int, int]]:
    """Every (micro-batch, accumulation steps) whose product is `effective_batch`, micro-batch
    ascending."""
    if effective_batch < 1:
        raise PlanError(f"effective batch must be a positive integer, got {effective_batch}")
    # Divisors come in pairs (m, N/m) with m <= sqrt(N): O(sqrt N) steps, not N (a scan of every
    # number up to N takes forever for a batch of 2**31, let alone a typo of 20 digits).
    small = [m for m in range(1, math.isqrt(effective_batch) + 1) if effective_batch % m == 0]
    micro_batches = sorted(set(small) | {effective_batch // m for m in small})
    return [(m, effective_batch // m) for m in micro_batches]


def memory_lines(observations: Iterable[Observation]) -> dict[str, MemoryFit]:
    """Least-squares peak-vs-micro-batch lines, one per kind with two distinct micro-batches."""
    lines: dict[str, MemoryFit] = {}
    for kind in (SINGLE, ACCUMULATED):
        points = {}
        for o in observations:
            if o.kind == kind and o.status == "ok" and o.peak_allocated is not None:
                points[o.micro_batch] = max(points.get(o.micro_batch, 0), o.peak_allocated)
        if len(points) >= 2:
            lines[kind] = fit_memory_line(list(points), list(points.values()))
    return lines


def _peak(kind: str, micro: int, accum: int, observations: Sequence[Observation], lines: dict[str, MemoryFit],
          exact_source: str) -> tuple[int | None, str, bool]:
    """The candidate's predicted peak, where it comes from, and whether an observation says it
    runs out of memory (a measured OOM, or an estimate above the device's usable memory: it does
    not fit whatever the budget says)."""
    same = [o for o in observations if o.kind == kind]
    # Accumulating holds at least what one micro-step holds, so a one-step OOM rules it out too.
    ooms = [o for o in observations if o.status == "oom" and (o.kind == kind or o.kind == SINGLE)]
    out_of_memory = bool(ooms) and micro >= min(o.micro_batch for o in ooms)
    exact = [o for o in same if o.micro_batch == micro and o.peak_allocated is not None
             and o.status in ("ok", "oom")]
    if exact:
        # An accumulated peak does not depend on N: another N's peak stands in, and says so.
        donor = max(exact, key=lambda o: (o.accum_steps == accum, o.peak_allocated))
        source = exact_source if donor.accum_steps == accum else \
            f"{exact_source} at {donor.micro_batch}x{donor.accum_steps}"
        return donor.peak_allocated, source + (", OOM" if out_of_memory else ""), out_of_memory
    if out_of_memory:
        return None, f"{'estimated' if exact_source == 'estimated' else 'measured'} OOM", True
    if kind in lines:
        return int(math.ceil(lines[kind].predict(micro))), "fit", False
    if kind == SINGLE and ACCUMULATED in lines:
        # One micro-step holds no gradients across micro-steps: the accumulating line bounds it.
        return int(math.ceil(lines[ACCUMULATED].predict(micro))), "fit (accumulating line)", False
    if kind == ACCUMULATED and SINGLE in lines:
        params = next((o.parameters for o in observations if o.parameters), None)
        if params:
            # Accumulating adds one fp32 copy of the gradients that persists across micro-steps.
            return int(math.ceil(lines[SINGLE].predict(micro))) + 4 * params, "fit + gradients", False
    return None, "unknown", False


def _speed(micro: int, accum: int, observations: Sequence[Observation]
           ) -> tuple[float | None, str | None, Observation | None]:
    """Samples/s of a candidate, where it comes from and the observation it comes from:
    "measured" or "estimated" for the pair itself, "from mb=M xN" when borrowed from the same
    micro-batch with another N (of the same kind, else of the other), (None, None, None) when
    nothing says."""
    rated = [o for o in observations if o.samples_per_s and o.status == "ok"]
    exact = [o for o in rated if o.micro_batch == micro and o.accum_steps == accum]
    if exact:
        best = max(exact, key=lambda o: o.samples_per_s)
        return best.samples_per_s, best.speed_source, best
    kind = SINGLE if accum == 1 else ACCUMULATED
    same = [o for o in rated if o.micro_batch == micro]
    if same:
        # Prefer the same kind, then the nearest accumulation count.
        donor = min(same, key=lambda o: (o.kind != kind, abs(math.log(o.accum_steps / accum))))
        how = "estimated " if donor.speed_predicted else ""
        return donor.samples_per_s, f"{how}from mb={donor.micro_batch} x{donor.accum_steps}", donor
    return None, None, None


def make_plan(effective_batch: int, budget_bytes: int, observations: Sequence[Observation],
              margin: float = DEFAULT_MARGIN, exact_source: str = "measured", source: str = "",
              workload: str = "") -> Plan:
    """The plan for `effective_batch` under `budget_bytes` (see the module docstring).

    Raises `PlanError` when the observations cannot predict any candidate, `NothingFits` when
    none fits the budget less the margin.
    """
    if budget_bytes <= 0:
        raise PlanError(f"memory budget must be positive, got {budget_bytes} bytes")
    if not 0.0 <= margin < 1.0:
        raise PlanError(f"margin must be in [0, 1), got {margin}")
    limit = usable(budget_bytes, margin)
    lines = memory_lines(observations)
    candidates = []
    for micro, accum in divisor_pairs(effective_batch):
        kind = SINGLE if accum == 1 else ACCUMULATED
        peak, peak_source, out_of_memory = _peak(kind, micro, accum, observations, lines, exact_source)
        speed, speed_source, donor = _speed(micro, accum, observations)
        candidates.append(Candidate(micro, accum, peak, peak_source, speed, speed_source,
                                    fits=peak is not None and not out_of_memory and peak <= limit,
                                    step_times=donor.step_times if donor else (),
                                    speed_error=donor.speed_error if donor else None))
    known = [c for c in candidates if c.predicted_peak is not None]
    if not known:
        raise PlanError("the observations predict no candidate: need results at two or more "
                        "micro-batch sizes, or at the candidates themselves")
    fitting = [c for c in candidates if c.fits]
    if not fitting:
        smallest = min(known, key=lambda c: c.predicted_peak)
        message = (f"no configuration of effective batch {effective_batch} fits in {format_bytes(budget_bytes)} "
                   f"({format_bytes(limit)} usable with a {margin:.0%} margin): the smallest, micro-batch "
                   f"{smallest.micro_batch} x {smallest.accum_steps}, needs {format_bytes(smallest.predicted_peak)}")
        if smallest.predicted_peak <= limit:  # it fits the budget, not the device
            message += " and runs out of the device's memory"
        raise NothingFits(message, Plan(effective_batch, budget_bytes, margin, tuple(candidates), None, message,
                                        lines, source, workload))
    timed = [StepTimes(o.step_times) for o in observations if len(o.step_times) >= 2]
    drift = typical_spread(timed) or 0.0
    rated = [c for c in fitting if c.samples_per_s]
    if rated:
        best = max(rated, key=lambda c: (c.samples_per_s, c.micro_batch))
        reason = f"the fastest that fits ({_rate(best)} samples/s, {best.speed_source})"
        runner_up = max((c for c in rated if c is not best), key=lambda c: (c.samples_per_s, c.micro_batch),
                        default=None)
        tie = speed_ratio(best, runner_up, drift) if runner_up else None
        if tie is not None and tie.known and not orders(tie):
            # Speeds that cannot be told apart leave memory to choose by: say what each needs.
            reason += (f"; {runner_up.label} is {_no_difference(best, runner_up)} and needs "
                       f"{format_bytes(runner_up.predicted_peak)} against {format_bytes(best.predicted_peak)}")
    else:
        best = max(fitting, key=lambda c: c.micro_batch)
        reason = ("the largest micro-batch that fits (no throughput measured; larger micro-batches "
                  "keep the device busier)")
    return Plan(effective_batch, budget_bytes, margin, tuple(candidates), best, reason, lines, source, workload,
                drift)


def observations_from_records(records: Iterable[Any], speed_error: float | None = None) -> list[Observation]:
    """Observations from result records (measured or estimated). `speed_error`: the user's own
    bound on a predicted speed's ratio error (`--assume speed_ratio_error`), in place of the one
    each estimate record carries."""
    observations = []
    for r in records:
        if r.status not in ("ok", "oom"):
            continue
        predicted = r.meter == "estimate" or getattr(r, "predicted_step_time_s", None) is not None
        error = (speed_error or (r.assumptions or {}).get("speed_ratio_error")) if predicted else None
        observations.append(Observation(r.micro_batch, r.accum_steps, r.status, r.peak_allocated, r.samples_per_s,
                                        r.parameters, speed_predicted=predicted,
                                        step_times=() if predicted else tuple(r.step_times_s),
                                        speed_error=error))
    return observations


def select_records(records: Sequence[Any], workload: str | None = None, scenario_family: str | None = None,
                   levers: Any = None, **knobs: Any) -> list[Any]:
    """The records one plan is about: one workload (by record name), one scenario family
    ("single" = large-batch/accumulated, or a multi-task scenario), one value of every knob that
    changes memory (amp, set_to_none, loss_norm, optimizer, device), and with `levers` (an
    `accumbench.levers.Levers`) the records measured with exactly those levers: a checkpointed
    record of a micro-batch is another configuration than its eager twin. Raises `PlanError`
    naming what to choose when the records mix several."""
    chosen = list(records)
    if levers is not None:
        from accumbench.levers import Levers

        held = sorted({Levers.of(r).describe() for r in chosen})
        chosen = [r for r in chosen if Levers.of(r) == levers]
        if not chosen:
            raise PlanError(f"no records with levers {levers.describe()}; the results hold {', '.join(held)} "
                            "(choose with --checkpoint, --freeze, --trainable, --lora, --compile)")
    if workload is not None:
        chosen = [r for r in chosen if r.workload == workload]
        if not chosen:
            names = sorted({r.workload for r in records})
            raise PlanError(f"no records of workload {workload!r}; the results hold {', '.join(names) or 'none'}")
    if scenario_family is None or scenario_family == "single":
        chosen = [r for r in chosen if r.scenario in ("large-batch", "accumulated")]
    else:
        chosen = [r for r in chosen if r.scenario == scenario_family]
    for name, value in knobs.items():
        if value is not None:
            chosen = [r for r in chosen if getattr(r, name) == value]
    if not chosen:
        raise PlanError("no records match the workload, scenario and settings asked for")
    for name, flag in (("workload", "--workload"), ("amp", "--amp"), ("set_to_none", "--set-to-none/--zero-grads"),
                       ("loss_norm", "--loss-norm"), ("optimizer", None), ("device_name", None), ("meter", None)):
        values = sorted({str(getattr(r, name)) for r in chosen})
        if len(values) > 1:
            hint = f"choose one with {flag}" if flag else "pass results of one kind only"
            raise PlanError(f"the results mix {name} values ({', '.join(values)}); {hint}")
    return chosen


def candidate_cases(workload: str, options: dict[str, Any], effective_batch: int, scenario: str | None = None,
                    **knobs: Any) -> list[Any]:
    """The cases to estimate for a plan: every divisor pair of the effective batch, as
    large-batch (one micro-step) or accumulated, or all in one multi-task `scenario`; pairs with
    more accumulation steps than a case may have (`MAX_ACCUM_STEPS`) are left to the fitted line."""
    from accumbench.cases import MAX_ACCUM_STEPS, Case

    frozen = tuple(sorted(options.items()))
    knobs = {k: v for k, v in knobs.items() if v is not None}
    cases = []
    for micro, accum in divisor_pairs(effective_batch):
        if accum > MAX_ACCUM_STEPS:  # a case cannot be made (nor estimated in any sane time)
            continue
        name = scenario or ("large-batch" if accum == 1 else "accumulated")
        cases.append(Case(workload, name, micro, accum, frozen, **knobs))
    return cases


def format_plan(plan: Plan) -> str:
    """The plan as a readable table with the recommendation underneath."""
    lines = [
        f"plan: {plan.workload or 'workload'}, effective batch {plan.effective_batch}, budget "
        f"{format_bytes(plan.budget_bytes)} ({format_bytes(plan.usable_bytes)} usable with a {plan.margin:.0%} margin)",
    ]
    if plan.source:
        lines.append(f"memory from {plan.source}")
    for kind, fit in plan.lines.items():
        lines.append(f"  line ({kind}): {format_bytes(fit.intercept_bytes)} + {format_bytes(fit.bytes_per_sample)} "
                     f"per sample ({fit.quality()})")
    rows = []
    for rank, c in enumerate(plan.ranked(), start=1):
        mark = "  <- recommended" if c == plan.recommended else ""
        rows.append((rank, c.micro_batch, c.accum_steps, format_bytes(c.predicted_peak), c.peak_source,
                     _rate(c) if c.samples_per_s else "-", c.speed_source or "", ("yes" if c.fits else "no") + mark))
    lines += ["", "candidates, fastest first:",
              text_table(("rank", "micro-batch", "accum", "peak", "from", "samples/s", "from", "fits"), rows,
                         right=(0, 1, 2, 3, 5))]
    r = plan.recommended
    # "predicted" only where it is: a measured peak is said as measured.
    peak_word = "measured" if r.peak_source == "measured" else "predicted"
    lines += ["", f"recommended: micro-batch {r.micro_batch} x {r.accum_steps} accumulation step(s), {peak_word} "
                  f"peak {format_bytes(r.predicted_peak)}: {plan.reason}"]
    costs = [cost_line(plan, c) for c in plan.ranked() if c.fits and c != r and plan.slowdown(c)]
    if costs and any(c.speed_source == "estimated" and c.speed_error for c in plan.candidates):
        costs.append(_MODEL_ERROR_NOTE)
    if costs:
        lines += ["", "what the other fitting candidates cost:"] + [f"  {line}" for line in costs]
    return "\n".join(lines)


_MODEL_ERROR_NOTE = ("(intervals of estimated speeds are the step-time model's error on such ratios in its "
                     "held-out validation, not a measurement's)")


def cost_line(plan: Plan, c: Candidate) -> str:
    """'8x32: 5.10 GiB, ~310 samples/s (estimated), 2.1x slower than 32x8 (1.5-3.0x)': one
    candidate's memory and speed against the recommendation, each number with where it comes
    from, and 'no measurable difference' where the interval of the ratio holds 1."""
    r = plan.recommended
    ratio = plan.speed_ratio(c)
    speed = f"{_rate(c)} samples/s ({c.speed_source})" if c.samples_per_s else "samples/s unknown"
    peak = f"{format_bytes(c.predicted_peak)} ({c.peak_source})" if c.predicted_peak is not None else "peak unknown"
    if ratio is None:
        versus = ""
    elif ratio.known and not orders(ratio):
        versus = f", {_no_difference(r, c)} ({_slower(ratio.value)}, interval {ratio.low:.3g}-{ratio.high:.3g}x)"
    elif ratio.value < 1.005:
        versus = f", as fast as {r.label}"
    else:
        versus = f", {_slower(ratio.value)} than {r.label}"
        if ratio.known:
            versus += f" ({ratio.low:.3g}-{ratio.high:.3g}x{', 95% interval' if c.speed_source == 'measured' else ''})"
    return f"{c.label}: {peak}, {speed}{versus}"


def orders(ratio: Ratio) -> bool:
    """True when the ratio's interval excludes 1, so the two candidates are in a known order.
    The interval alone decides, as in `steptime.pair_order` (not `Ratio.differs`, whose +-5%
    precision rule is for claiming a speed-up): 2.5x known to [2.0, 3.1] orders its pair."""
    return ratio.known and not (ratio.low <= 1.0 <= ratio.high)


def _slower(ratio: float) -> str:
    """'2.1x slower', '14% slower' or 'as fast' for a ratio of samples/s (recommended / other)."""
    if ratio >= 1.5:
        return f"{ratio:.1f}x slower"
    if ratio >= 1.005:
        return f"{ratio - 1:.0%} slower"
    return "as fast"


def _no_difference(best: Candidate, other: Candidate) -> str:
    """How to say that `other` cannot be told from `best`: by measurement or within the model's error."""
    if other.speed_source == "measured":
        return f"not measurably slower than {best.label}"
    return f"within the step-time model's error of {best.label}"


def _rate(c: Candidate) -> str:
    """Samples/s with '~' when predicted or borrowed rather than measured for this pair."""
    if not c.samples_per_s:
        return "-"
    approx = "" if c.speed_source == "measured" else "~"
    return f"{approx}{c.samples_per_s:,.0f}" if c.samples_per_s >= 100 else f"{approx}{c.samples_per_s:,.1f}"


def _interval(ratio: Ratio | None) -> list[float] | None:
    """[low, high] of a ratio's interval (None without one)."""
    return [ratio.low, ratio.high] if ratio is not None and ratio.known else None


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (for --json); "recommended" is None in a `NothingFits`'s plan."""
    def cand(c: Candidate) -> dict[str, Any]:
        return {"micro_batch": c.micro_batch, "accum_steps": c.accum_steps, "predicted_peak": c.predicted_peak,
                "peak_source": c.peak_source, "samples_per_s": c.samples_per_s, "speed_source": c.speed_source,
                "fits": c.fits, "variant": c.variant, "slowdown_vs_recommended": plan.slowdown(c),
                "slowdown_interval": _interval(plan.speed_ratio(c))}
    return {
        "workload": plan.workload, "effective_batch": plan.effective_batch, "budget_bytes": plan.budget_bytes,
        "margin": plan.margin, "usable_bytes": plan.usable_bytes, "source": plan.source,
        "lines": {k: {"bytes_per_sample": f.bytes_per_sample, "intercept_bytes": f.intercept_bytes,
                        "r2": f.r2 if f.points >= MIN_POINTS_FOR_R2 else None, "points": f.points}
                  for k, f in plan.lines.items()},
        "candidates": [cand(c) for c in plan.ranked()],
        "recommended": cand(plan.recommended) if plan.recommended else None, "reason": plan.reason,
    }


__all__ = ["ACCUMULATED", "DEFAULT_MARGIN", "SINGLE", "Candidate", "NothingFits", "Observation", "Plan",
           "PlanError", "candidate_cases", "cost_line", "divisor_pairs", "format_plan", "make_plan", "memory_lines",
           "observations_from_records", "orders", "plan_to_dict", "select_records", "speed_ratio", "usable"]
