"""Plan across levers: the micro-batch x steps plan with and without activation checkpointing
(with the `--freeze`/`--lora` set-up, when one is given, in both), and what the lever costs.

`accumbench plan` makes one plan per lever setting from estimates of the same candidates
(`accumbench.plan.make_plan` on each); this module puts them side by side: which configurations
fit each way, the fastest that fits overall (by throughput where the records carry one, else the
largest micro-batch, preferring fewer levers), and per micro-batch estimated both ways what the
lever saves in memory and costs in throughput (or, without step times, in FLOPs per step:
checkpointing runs the checkpointed blocks' forward twice).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from accumbench.textfmt import format_bytes


@dataclass(frozen=True)
class LeverOption:
    """One lever setting's plan (None when nothing fits: `problem` says why) and its records."""

    label: str
    plan: Any
    problem: str | None = None
    records: Sequence[Any] = field(default_factory=tuple)


@dataclass(frozen=True)
class LeverCost:
    """What switching a lever on changes at one micro-batch x steps: bytes (negative saves),
    and the relative change of samples/s, else of FLOPs per step (None when unknown)."""

    micro_batch: int
    accum_steps: int
    peak_change: int
    speed_change: float | None
    flops_change: float | None


def lever_costs(base: Sequence[Any], levered: Sequence[Any]) -> list[LeverCost]:
    """Per configuration measured (or estimated) both ways, the lever's cost."""
    index = {(r.micro_batch, r.accum_steps): r for r in base if r.status == "ok" and r.peak_allocated}
    costs = []
    for r in levered:
        b = index.get((r.micro_batch, r.accum_steps))
        if b is None or r.status != "ok" or r.peak_allocated is None:
            continue
        speed = r.samples_per_s / b.samples_per_s - 1 if r.samples_per_s and b.samples_per_s else None
        flops = r.flops_per_step / b.flops_per_step - 1 if r.flops_per_step and b.flops_per_step else None
        costs.append(LeverCost(r.micro_batch, r.accum_steps, r.peak_allocated - b.peak_allocated, speed, flops))
    return costs


def best_option(options: Sequence[LeverOption]) -> LeverOption | None:
    """The option whose recommendation is fastest: by samples/s when every recommendation has
    one, else the largest micro-batch (fewer levers first on a tie: they cost time)."""
    planned = [o for o in options if o.plan is not None]
    if not planned:
        return None
    if all(o.plan.recommended.samples_per_s for o in planned):
        return max(planned, key=lambda o: o.plan.recommended.samples_per_s)
    return max(planned, key=lambda o: (o.plan.recommended.micro_batch, -options.index(o)))


def format_exploration(options: Sequence[LeverOption], lever: str = "checkpointing") -> str:
    """The plans side by side, the lever's cost and the overall recommendation, as text."""
    lines = ["", "levers explored:"]
    for option in options:
        if option.plan is None:
            lines.append(f"  {option.label}: nothing fits ({option.problem})")
            continue
        fitting = [c for c in option.plan.candidates if c.fits]
        r = option.plan.recommended
        speed = f", {r.samples_per_s:,.1f} samples/s" if r.samples_per_s else ""
        lines.append(f"  {option.label}: {len(fitting)} configuration(s) fit, up to micro-batch "
                     f"{max(c.micro_batch for c in fitting)}; best {r.micro_batch} x {r.accum_steps}, "
                     f"peak {_gib(r.predicted_peak)}{speed}")
    if len(options) == 2:
        costs = lever_costs(options[0].records, options[1].records)
        if costs:
            saved = statistics.median(c.peak_change for c in costs)
            speeds = [c.speed_change for c in costs if c.speed_change is not None]
            flops = [c.flops_change for c in costs if c.flops_change is not None]
            if speeds:
                # Step time at the same samples per step: time ratio = 1 / speed ratio.
                cost = f"~{1 / (1 + statistics.median(speeds)) - 1:+.0%} step time"
            elif flops:
                cost = f"~{statistics.median(flops):+.0%} FLOPs per step (no step times to compare)"
            else:
                cost = "step-time cost unknown"
            largest = max(costs, key=lambda c: c.micro_batch)
            lines.append(f"  {lever}: {_gib_signed(largest.peak_change)} at micro-batch {largest.micro_batch} "
                         f"(median {_gib_signed(saved)} over {len(costs)} configuration(s)), {cost}")
    best = best_option(options)
    if best is not None:
        r = best.plan.recommended
        lines.append(f"recommended across levers: {best.label}, micro-batch {r.micro_batch} x {r.accum_steps}")
    return "\n".join(lines)


def _gib(n: float | None) -> str:
    return format_bytes(n)


def _gib_signed(n: float) -> str:
    return format_bytes(n, signed=True)


__all__ = ["LeverCost", "LeverOption", "best_option", "format_exploration", "lever_costs"]
