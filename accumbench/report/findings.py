"""One-line readings of the numbers, for the "what this shows" text under each figure.

Each function takes one section of a prepared frame and returns sentences about what the data
in it says (not what it should say): the largest large batch that fitted, what accumulation
saved there, what it cost in throughput. Empty list when the data does not allow the sentence.
"""

from __future__ import annotations

import math

import pandas as pd

from accumbench.fit import fit_quality
from accumbench.report.data import ddp_sync_text, scenario_name
from accumbench.report.units import format_bytes, format_percent
from accumbench.stats import MIN_STEPS_FOR_RATIO, Ratio, StepTimes, throughput_ratio, typical_spread

NO_DIFFERENCE = "no measurable difference"
TOO_FEW_STEPS = "too few steps to say"
TOO_NOISY = "too noisy to say"


def _x(value: float) -> str:
    return f"{value:.2f}×"


def ratio_text(ratio: Ratio | None, what: str = "") -> str:
    """A throughput ratio in words, never a bare point figure.

    - interval excludes 1: '0.62× [0.58×, 0.66×] WHAT';
    - interval contains 1: 'no measurable difference (0.93×–1.05×)';
    - a median known to worse than ±5%: 'too noisy to say (a median ... known to ±12% only; range)',
      or, when even that interval excludes 1, 'between 0.31× and 0.50×, imprecisely (a median ...)':
      the direction holds, no point figure is claimed;
    - no interval (under 6 steps on a side, or no step times): 'too few steps to say'.
    """
    if ratio is None or not ratio.known:
        return TOO_FEW_STEPS
    if ratio.too_noisy is not None:
        known = f"a median step time known to ±{format_percent(ratio.too_noisy)} only"
        if ratio.low > 1 or ratio.high < 1:
            return f"between {_x(ratio.low)} and {_x(ratio.high)}" + (f" {what}" if what else "") + \
                f", imprecisely ({known})"
        return f"{TOO_NOISY} ({known}; {_x(ratio.low)}–{_x(ratio.high)})"
    if not ratio.differs:
        return f"{NO_DIFFERENCE} ({_x(ratio.low)}–{_x(ratio.high)})"
    return f"{_x(ratio.value)} [{_x(ratio.low)}, {_x(ratio.high)}]" + (f" {what}" if what else "")


def row_ratio(a, b) -> Ratio | None:
    """Throughput of record row `a` relative to row `b` (prepared-frame rows: `step_times_`,
    `effective_batch`, `timing_drift_`), with its bootstrap interval widened by the section's
    timing drift allowance."""
    drift = max(float(getattr(a, "timing_drift_", 0.0) or 0.0), float(getattr(b, "timing_drift_", 0.0) or 0.0))
    return throughput_ratio(a.step_times_, b.step_times_, a.effective_batch, b.effective_batch,
                            drift=drift if math.isfinite(drift) else 0.0)


def noise_findings(frame: pd.DataFrame) -> list[str]:
    """How noisy the section's machine was (median over its cases of IQR / median step time),
    how the adaptive timing stopped, and, on the cpu meter, what CPU throughput is worth."""
    ok = frame[frame["status"] == "ok"]
    timed = [t for t in ok["step_times_"] if isinstance(t, StepTimes) and len(t)] \
        if "step_times_" in ok else []
    out = []
    spread = typical_spread(timed)
    if timed and all(len(t) < MIN_STEPS_FOR_RATIO for t in timed):
        # No case can be told from another: a spread of two or three steps would read as a claim.
        out.append(f"Timing: every one of the {len(timed)} timed cases has under {MIN_STEPS_FOR_RATIO} step "
                   f"times, which say nothing about speed (measure more: --steps {MIN_STEPS_FOR_RATIO} or more).")
    elif spread is not None:
        sentence = (f"Timing noise: step times spread by {format_percent(spread)} of their median "
                    f"(median IQR/median over {len(timed)} timed cases); every speed ratio's interval "
                    f"is widened by that much on each side, for the machine's drift between cases "
                    f"measured at different times")
        reasons = ok["stop_reason"].value_counts() if "stop_reason" in ok else pd.Series(dtype=int)
        parts = [f"{reasons[k]} {label}" for k, label in (
            ("ci-target", "reached their CI target"),
            ("time-cap", "stopped at the time cap"), ("fixed", "timed a fixed count"))
            if reasons.get(k, 0)]
        few = sum(1 for t in timed if len(t) < MIN_STEPS_FOR_RATIO)
        if parts:
            sentence += "; " + ", ".join(parts)
        if few:
            sentence += f"; {few} case(s) with under {MIN_STEPS_FOR_RATIO} steps say nothing about speed"
        out.append(sentence + ".")
    if (frame["meter"] == "cpu").any() and not ok.empty:
        out.append("Measured with the cpu meter: CPU throughput says little about a GPU's; read "
                   "these speeds as relative, on this machine only.")
    return out


def change_text(fraction: float, less: str, more: str) -> str:
    """A relative change in words: `-0.4` -> '40.0% less', `0` -> 'the same' (below 0.05%)."""
    if abs(fraction) < 0.0005:
        return "the same"
    return f"{format_percent(abs(fraction))} {less if fraction < 0 else more}"


def _by_workload(frame: pd.DataFrame):
    """(name, rows) per workload and variant: numbers are compared only within one variant
    (a bf16 large batch against a bf16 accumulation, never against an fp16 one)."""
    for (workload, variant), rows in frame.groupby(["workload", "variant"], sort=False):
        yield (f"{workload} ({variant})" if variant else workload), rows


def memory_findings(frame: pd.DataFrame) -> list[str]:
    """Per workload (and variant): the large batch's largest fit and first OOM, and
    accumulation's peak there."""
    sentences = []
    for workload, data in _by_workload(frame):
        large = data[data["scenario"] == "large-batch"]
        accum = data[(data["scenario"] == "accumulated") & (data["status"] == "ok")
                     & (data["accum_steps"] > 1)]
        ok_large = large[large["status"] == "ok"]
        oom_large = large[large["status"] == "oom"]
        parts = []
        if not ok_large.empty:
            top = ok_large.loc[ok_large["effective_batch"].idxmax()]
            parts.append(f"the large batch peaks at {format_bytes(top['peak_allocated'])} at "
                         f"effective batch {top['effective_batch']}")
        if not oom_large.empty:
            parts.append(f"runs out of memory from effective batch "
                         f"{oom_large['effective_batch'].min()}")
        if not accum.empty:
            target = accum["effective_batch"].max()
            at = accum[accum["effective_batch"] == target]
            best = at.loc[at["peak_allocated"].idxmin()]
            sentence = (f"accumulating {best['micro_batch']} × {best['accum_steps']} reaches "
                        f"{target} at {format_bytes(best['peak_allocated'])}")
            same = ok_large[ok_large["effective_batch"] == target]
            if target in set(oom_large["effective_batch"]):
                sentence += ", where the large batch ran out of memory"
            elif not same.empty:
                ref = same["peak_allocated"].iloc[0]
                change = change_text((best["peak_allocated"] - ref) / ref, "less", "more")
                sentence += f" ({change} than the large batch)" if change != "the same" \
                    else " (the same as the large batch)"
            parts.append(sentence)
        if parts:
            sentences.append(f"{workload}: " + "; ".join(parts) + ".")
    return sentences


def throughput_findings(frame: pd.DataFrame) -> list[str]:
    """Per workload: accumulated throughput relative to the large batch's, at one batch size,
    as ratios with their 95% intervals ("no measurable difference" when an interval holds 1).

    Uses the largest effective batch at which both the large batch and accumulation ran.
    """
    sentences = []
    ok = frame[(frame["status"] == "ok") & frame["samples_per_s_"].notna()]
    for workload, data in _by_workload(ok):
        large = data[data["scenario"] == "large-batch"]
        accum = data[(data["scenario"] == "accumulated") & (data["accum_steps"] > 1)]
        common = sorted(set(large["effective_batch"]) & set(accum["effective_batch"]))
        if not common:
            continue
        target = common[-1]
        ref = next(large[large["effective_batch"] == target].itertuples())
        shares = [
            f"{r.micro_batch} × {r.accum_steps}{_sync_note(r)}: {ratio_text(row_ratio(r, ref))}"
            for r in accum[accum["effective_batch"] == target].sort_values("micro_batch").itertuples()
        ]
        sentences.append(f"{workload}, effective batch {target}, accumulation's samples/s relative "
                         "to the large batch's (95% interval): " + "; ".join(shares) + ".")
    return sentences


def _sync_note(row) -> str:
    """' (no_sync())' for a DDP accumulation record, so its two runs are told apart."""
    sync = ddp_sync_text(getattr(row, "distributed", None))
    return f" ({sync})" if sync else ""


def fit_findings(fits: pd.DataFrame) -> list[str]:
    """Per fitted line: what one more sample costs and the fixed cost."""
    return [
        f"{f.workload}, {scenario_name(f.scenario)}{f' ({f.variant})' if f.variant else ''}: "
        f"{format_bytes(f.bytes_per_sample)} per sample on top of "
        f"{format_bytes(f.intercept_bytes)} ({fit_quality(f.r2, f.points)})."
        for f in fits.itertuples()
    ]


def multitask_findings(frame: pd.DataFrame) -> list[str]:
    """Per multi-task configuration: sequential backward's memory and speed vs the combined loss."""
    sentences = []
    data = frame[frame["status"] == "ok"]
    keys = ["workload", "layout", "micro_batch", "accum_steps", "variant"]
    for key, group in data.groupby(keys, sort=False, dropna=False):
        by = {r.scenario: r for r in group.itertuples()}
        comb, seq = by.get("multitask-combined"), by.get("multitask-sequential")
        if comb is None or seq is None:
            continue
        mem = change_text((seq.peak_allocated - comb.peak_allocated) / comb.peak_allocated,
                          "less", "more")
        speed = ""
        if comb.samples_per_s_ and seq.samples_per_s_ == seq.samples_per_s_:  # not NaN
            ratio = row_ratio(seq, comb)
            speed = (f"; its samples/s: {ratio_text(ratio, 'of the combined loss')}"
                     if ratio is not None and ratio.known else f"; its samples/s: {TOO_FEW_STEPS}")
        layout = key[1] if isinstance(key[1], str) else "?"
        sentences.append(f"{key[0]} ({layout}, {key[2]}×{key[3]}): compared with the combined "
                         f"loss, sequential backward needs {mem} peak memory{speed}.")
    return sentences
