"""Plan across levers: the micro-batch x steps plan with and without activation checkpointing
(with the `--freeze`/`--lora` set-up, when one is given, in both), and what the lever costs.

`accumbench plan` makes one plan per lever setting from estimates of the same candidates
(`accumbench.plan.make_plan` on each); this module puts them side by side: which configurations
fit each way, the fastest that fits overall (by throughput where the records carry one, else the
largest micro-batch, preferring fewer levers), and per micro-batch estimated both ways what the
lever saves in memory and costs in step time (or, without step times, in FLOPs per step:
checkpointing runs the checkpointed blocks' forward twice). A step-time cost carries the interval
`accumbench.plan.speed_ratio` gives two configurations' speeds (the bootstrap of two measured
pairs, the step-time model's error for two predicted ones), and one whose interval holds 1 is
said to be within it, as plan says of its candidates; so is a recommendation across levers that
cannot be told from the other setting's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from accumbench.plan import Candidate, make_plan, observations_from_records, orders, speed_ratio
from accumbench.stats import Ratio, StepTimes, typical_spread
from accumbench.textfmt import format_bytes


@dataclass(frozen=True)
class LeverOption:
    """One lever setting's plan (None when there is none: `problem` says why) and its records."""

    label: str
    plan: Any
    problem: str | None = None
    records: Sequence[Any] = field(default_factory=tuple)
    speed_error: float | None = None  # `--assume speed_ratio_error` over the records' own, when given


@dataclass(frozen=True)
class LeverCost:
    """What switching a lever on changes at one micro-batch x steps: bytes (negative saves);
    the step time with the lever over the step time without it (the plain samples/s over the
    levered), with its interval where one can be given; and the relative change of FLOPs per
    step (None when unknown)."""

    micro_batch: int
    accum_steps: int
    peak_change: int
    time_ratio: Ratio | None
    flops_change: float | None
    measured: bool = False  # both speeds measured (else predicted, or one of each)


def lever_costs(base: Sequence[Any], levered: Sequence[Any], speed_error: float | None = None) -> list[LeverCost]:
    """Per configuration measured (or estimated) both ways, the lever's cost (`speed_error`: the
    user's bound on a predicted ratio, as `plan.observations_from_records` takes it)."""
    plain = {(o.micro_batch, o.accum_steps): (o, r) for o, r in _observed(base, speed_error) if o.peak_allocated}
    pairs = [(plain[key], (o, r)) for o, r in _observed(levered, speed_error)
             if (key := (o.micro_batch, o.accum_steps)) in plain and o.peak_allocated is not None]
    # The allowance for drift between cases, as plan widens its measured ratios.
    drift = typical_spread([StepTimes(o.step_times) for pair in pairs for o, _ in pair if len(o.step_times) >= 2])
    costs = []
    for (b, b_record), (o, record) in pairs:
        flops = record.flops_per_step / b_record.flops_per_step - 1 \
            if record.flops_per_step and b_record.flops_per_step else None
        costs.append(LeverCost(o.micro_batch, o.accum_steps, o.peak_allocated - b.peak_allocated,
                               speed_ratio(b, o, drift or 0.0), flops,
                               measured=b.speed_source == o.speed_source == "measured"))
    return costs


def lever_option(label: str, records: Sequence[Any], effective_batch: int, budget: int, margin: float,
                 exact_source: str, costed: Sequence[Any] | None = None,
                 speed_error: float | None = None) -> LeverOption:
    """One lever setting's plan from its records (estimated or measured): `make_plan` over them,
    or the reason there is none (nothing fits, nothing to predict from). `costed`: the records
    the lever's cost is told from (default all of them); `speed_error`: the user's bound on a
    predicted ratio (`--assume speed_ratio_error`), kept for the cost."""
    costed = records if costed is None else costed
    try:
        made = make_plan(effective_batch, budget, observations_from_records(records, speed_error), margin,
                         exact_source=exact_source)
    except ValueError as exc:  # PlanError, NothingFits included
        return LeverOption(label, None, str(exc), costed, speed_error)
    return LeverOption(label, made, None, costed, speed_error)


def _observed(records: Sequence[Any], speed_error: float | None = None) -> list[tuple[Any, Any]]:
    """The ok records, each with its `accumbench.plan.Observation` (whose speed source and
    model error `speed_ratio` reads)."""
    ok = [r for r in records if r.status == "ok"]
    return list(zip(observations_from_records(ok, speed_error), ok))


def best_option(options: Sequence[LeverOption]) -> LeverOption | None:
    """The option whose recommendation is fastest: by samples/s when every recommendation has
    one, else the largest micro-batch (fewer levers first on a tie: they cost time)."""
    planned = [o for o in options if o.plan is not None]
    if not planned:
        return None
    if all(o.plan.recommended.samples_per_s for o in planned):
        return max(planned, key=lambda o: o.plan.recommended.samples_per_s)
    return max(planned, key=lambda o: (o.plan.recommended.micro_batch, -options.index(o)))


def exploration_to_dict(options: Sequence[LeverOption]) -> dict[str, Any]:
    """The exploration as plain data (`plan --json`): each lever setting's plan, or why there
    is none, and the setting recommended across them."""
    from accumbench.plan import plan_to_dict

    best = best_option(options)
    return {"options": [{"levers": o.label, "plan": plan_to_dict(o.plan) if o.plan is not None else None,
                         "problem": o.problem} for o in options],
            "recommended": best.label if best is not None else None}


def format_exploration(options: Sequence[LeverOption], lever: str = "checkpointing") -> str:
    """The plans side by side, the lever's cost and the overall recommendation, as text."""
    lines = ["", "levers explored:"]
    for option in options:
        if option.plan is None:
            # The problem says itself: nothing fits (what the smallest needs), the lever does not
            # apply (a workload without blocks), or an estimate failed.
            lines.append(f"  {option.label}: not planned: {option.problem}")
            continue
        fitting = [c for c in option.plan.candidates if c.fits]
        r = option.plan.recommended
        speed = f", {r.samples_per_s:,.1f} samples/s" if r.samples_per_s else ""
        lines.append(f"  {option.label}: {len(fitting)} configuration(s) fit, up to micro-batch "
                     f"{max(c.micro_batch for c in fitting)}; best {r.micro_batch} x {r.accum_steps}, "
                     f"peak {_gib(r.predicted_peak)}{speed}")
    if len(options) == 2:
        costs = lever_costs(options[0].records, options[1].records, options[0].speed_error)
        if costs:
            saved = statistics.median(c.peak_change for c in costs)
            largest = max(costs, key=lambda c: c.micro_batch)
            lines.append(f"  {lever}: {_gib_signed(largest.peak_change)} at micro-batch {largest.micro_batch} "
                         f"(median {_gib_signed(saved)} over {len(costs)} configuration(s)), {_cost_text(costs, largest)}")
            ratio = largest.time_ratio
            if lever == "checkpointing" and ratio is not None and ratio.known and ratio.high < 1:
                # Recomputing the forward only adds work: a faster step is the measurements' doing.
                lines.append("  (checkpointing only adds work: a step faster with it says the two measurements "
                             "are not comparable: a noisy run, or other conditions; re-measure both)")
    best = best_option(options)
    if best is not None:
        r = best.plan.recommended
        line = f"recommended across levers: {best.label}, micro-batch {r.micro_batch} x {r.accum_steps}"
        others = [o for o in options if o.plan is not None and o is not best]
        line += "".join(_tie_text(best, other) for other in others)
        lines.append(line)
    return "\n".join(lines)


def _cost_text(costs: Sequence[LeverCost], at: LeverCost) -> str:
    """The lever's step-time cost at configuration `at` with its interval, and its median over
    `costs`; without step times the median change of FLOPs per step."""
    timed = [c for c in costs if c.time_ratio is not None]
    if not timed:
        flops = [c.flops_change for c in costs if c.flops_change is not None]
        if flops:
            return f"~{statistics.median(flops):+.0%} FLOPs per step (no step times to compare)"
        return "step-time cost unknown"
    median_change = f"{statistics.median(c.time_ratio.value for c in timed) - 1:+.0%}"
    ratio = at.time_ratio
    if ratio is None:
        return (f"~{median_change} step time (median over the {len(timed)} configuration(s) with step times; "
                f"none at micro-batch {at.micro_batch})")
    notes = [f"median {median_change} over the {len(timed)}"] if len(timed) > 1 else []
    change = f"{ratio.value - 1:+.0%} step time there"
    if not ratio.known:
        return f"~{change}" + (f" ({notes[0]}; no interval)" if notes else " (no interval)")
    interval = f"{ratio.low:.3g}-{ratio.high:.3g}x"
    if not orders(ratio):
        within = "not measurably different from no cost" if at.measured else "within the step-time model's error of no cost"
        return f"{change}, {within} ({'; '.join([interval] + notes)})"
    return f"{change} ({'; '.join([interval + (', 95% interval' if at.measured else '')] + notes)})"


def _tie_text(best: LeverOption, other: LeverOption) -> str:
    """'; ckpt-blocks' 64 x 1 is within the step-time model's error of it: ...' when the other
    option's recommendation cannot be told from the best one's in speed (memory then decides);
    empty otherwise."""
    a, b = best.plan.recommended, other.plan.recommended
    ratio = speed_ratio(a, b, max(best.plan.drift, other.plan.drift))
    if ratio is None or not ratio.known or orders(ratio):
        return ""
    within = "not measurably slower" if _measured(a, b) else "within the step-time model's error of it"
    return (f"; the {other.label} plan's {b.micro_batch} x {b.accum_steps} is {within} "
            f"({ratio.low:.3g}-{ratio.high:.3g}x) and needs {_gib(b.predicted_peak)} against {_gib(a.predicted_peak)}")


def _measured(*candidates: Candidate) -> bool:
    return all(c.speed_source == "measured" for c in candidates)


def _gib(n: float | None) -> str:
    return format_bytes(n)


def _gib_signed(n: float) -> str:
    return format_bytes(n, signed=True)


__all__ = ["LeverCost", "LeverOption", "best_option", "format_exploration", "lever_costs", "lever_option"]
