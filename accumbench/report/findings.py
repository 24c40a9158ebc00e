"""One-line readings of the numbers, for the "what this shows" text under each figure.

Each function takes one section of a prepared frame and returns sentences about what the data
in it says (not what it should say): the largest large batch that fitted, what accumulation
saved there, what it cost in throughput. Empty list when the data does not allow the sentence.
"""

from __future__ import annotations

import pandas as pd

from accumbench.report.data import scenario_name
from accumbench.report.units import format_bytes, format_percent


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
    """Per workload: accumulated throughput as a share of the large batch's, at one batch size.

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
        ref = large.loc[large["effective_batch"] == target, "samples_per_s_"].iloc[0]
        shares = [
            f"{format_percent(r.samples_per_s_ / ref)} (micro-batch {r.micro_batch})"
            for r in accum[accum["effective_batch"] == target].sort_values("micro_batch").itertuples()
        ]
        sentences.append(f"{workload}, effective batch {target}: accumulation reaches "
                         + ", ".join(shares) + " of the large batch's samples/s.")
    return sentences


def fit_findings(fits: pd.DataFrame) -> list[str]:
    """Per fitted line: what one more sample costs and the fixed cost."""
    return [
        f"{f.workload}, {scenario_name(f.scenario)}{f' ({f.variant})' if f.variant else ''}: "
        f"{format_bytes(f.bytes_per_sample)} per sample on top of "
        f"{format_bytes(f.intercept_bytes)} (r² {f.r2:.3f}, {f.points} points)."
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
            change = (seq.samples_per_s_ - comb.samples_per_s_) / comb.samples_per_s_
            speed = f" and runs at {change_text(change, 'lower', 'higher')} samples/s"
        layout = key[1] if isinstance(key[1], str) else "?"
        sentences.append(f"{key[0]} ({layout}, {key[2]}×{key[3]}): compared with the combined "
                         f"loss, sequential backward needs {mem} peak memory{speed}.")
    return sentences
