"""The memory-timeline figure: live bytes through one optimizer step, phases shaded, peak marked.

Pairs are drawn side by side on a shared y axis: the large batch next to accumulation at the
same micro-batch (a sawtooth of one hump per micro-step over a floor that steps up when the
gradients appear), and the combined multi-task loss next to the sequential backward (one hump of
two graphs against two humps of one). Timelines live in the sidecar file a record's `timeline`
field names, beside its results file (see `accumbench.timeline`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from accumbench.report.data import ddp_sync_text
from accumbench.report.tables import Cell, Table, number, text
from accumbench.report.units import format_bytes, is_missing, memory_unit
from accumbench.timeline import Timeline, timelines_of

PHASE_COLORS = {"forward": "#cfe2f3", "backward": "#fce5cd", "optimizer": "#d9d9d9", "zero_grad": "#ead1dc"}
PAIRS = (("large-batch", "accumulated"), ("multitask-combined", "multitask-sequential"))


def load_timelines(frame: pd.DataFrame) -> dict[int, Timeline]:
    """The timeline of each row that has one, keyed by the row's index."""
    found: dict[int, Timeline] = {}
    if "timeline" not in frame.columns:
        return found
    sidecars: dict[tuple[str, str], dict[tuple[str, str], Timeline]] = {}  # each read once
    for index, row in frame.iterrows():
        if is_missing(row.get("timeline")) or is_missing(row.get("source")):
            continue
        key = (str(row["source"]), str(row["timeline"]))
        if key not in sidecars:
            sidecars[key] = timelines_of(Path(key[0]), key[1])
        timeline = sidecars[key].get((row["case_id"], row["run_id"]))
        if timeline is not None:
            found[index] = timeline
    return found


# The sawtooth reads best with a few humps: 32 micro-steps squeeze each into a sliver.
READABLE_STEPS = 4


def _readability(row: Any) -> tuple[float, int]:
    """Sort key of the right-hand case of a pair: the number of accumulation steps nearest
    `READABLE_STEPS`, then the largest micro-batch (its activations stand out over the
    parameters and optimizer state)."""
    steps = max(int(row["accum_steps"]), 1)
    return (abs(math.log2(steps) - math.log2(READABLE_STEPS)), -int(row["micro_batch"]))


def _pairs(frame: pd.DataFrame, timelines: dict[int, Timeline]) -> list[tuple[Any, Any]]:
    """(left row, right row) pairs to draw, one per workload and pair of scenarios: the large
    batch beside the accumulated case at the same micro-batch; the combined beside the sequential
    case with the same micro-batch and steps. Of the cases that have a partner, the one drawn is
    the first by `_readability`."""
    rows = frame.loc[list(timelines)]
    pairs = []
    # Within one variant (amp, levers, ...): an fp32 large batch beside a bf16 accumulation
    # would show the dtype, not accumulation.
    keys = ["section", "workload"] + (["variant"] if "variant" in rows else [])
    for _, group in rows.groupby(keys, sort=False):
        for left_name, right_name in PAIRS:
            rights = group[group["scenario"] == right_name]
            for _, right in sorted(rights.iterrows(), key=lambda item: _readability(item[1])):
                if left_name == "large-batch":
                    lefts = group[(group["scenario"] == left_name) & (group["micro_batch"] == right["micro_batch"])]
                else:
                    lefts = group[(group["scenario"] == left_name) & (group["micro_batch"] == right["micro_batch"])
                                  & (group["accum_steps"] == right["accum_steps"])]
                if len(lefts):
                    pairs.append((lefts.iloc[0], right))
                    break
    return pairs


def _label(row: Any) -> str:
    steps = f" x {row['accum_steps']}" if row["accum_steps"] > 1 else ""
    sync = ddp_sync_text(row.get("distributed")) if row["scenario"] != "large-batch" else ""
    variant = row.get("variant") or ""
    return (f"{row['workload']}: {row['scenario']}, micro-batch {row['micro_batch']}{steps}"
            + (f", {sync}" if sync else "") + (f" ({variant})" if variant else ""))


def _draw(ax, timeline: Timeline, row: Any, scale: int, unit: str) -> None:
    x = range(len(timeline.bytes))
    for start, end, phase, _ in timeline.phase_spans():
        if phase in PHASE_COLORS and end > start:
            ax.axvspan(start, end, color=PHASE_COLORS[phase], lw=0)
    ax.plot(x, [b / scale for b in timeline.bytes], color="#1f3b73", lw=1.2)
    phase, micro = timeline.peak_phase
    where = phase + (f" {micro}" if micro is not None else "")
    ax.plot([timeline.peak_index], [timeline.peak / scale], "o", color="#d62728")
    ax.annotate(f"peak {format_bytes(timeline.peak)}\n({where})", (timeline.peak_index, timeline.peak / scale),
                textcoords="offset points", xytext=(6, -24), fontsize=8, color="#d62728",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
    ax.set_title(_label(row), fontsize=9)
    ax.set_xlabel("event in the step (allocations and frees)" if timeline.source == "tracker"
                  else "aten op in the step")
    ax.set_ylabel(f"live memory ({unit})")
    ax.margins(x=0.01)


def timeline_figure(frame: pd.DataFrame) -> Figure | None:
    """Pairs of timelines (see module docstring); None when no record has a timeline to pair."""
    timelines = load_timelines(frame)
    pairs = _pairs(frame, timelines)
    if not pairs:
        return None
    fig = Figure(figsize=(12.4, 3.6 * len(pairs)), layout="constrained")
    axes = fig.subplots(len(pairs), 2, squeeze=False)
    for (left, right), (ax_left, ax_right) in zip(pairs, axes):
        peak = max(timelines[left.name].peak, timelines[right.name].peak)
        unit, scale = memory_unit(peak)
        for ax, row in ((ax_left, left), (ax_right, right)):
            _draw(ax, timelines[row.name], row, scale, unit)
            ax.set_ylim(0, peak / scale * 1.12)
    fig.legend(handles=[Patch(color=c, label=p) for p, c in PHASE_COLORS.items()], loc="outside lower center",
               ncols=len(PHASE_COLORS), frameon=False)
    return fig


def timeline_table(frame: pd.DataFrame) -> Table:
    """Per traced case: the peak, where in the step it happens, what holds the bytes there."""
    timelines = load_timelines(frame)
    rows: list[tuple[Cell, ...]] = []
    for index, timeline in timelines.items():
        row = frame.loc[index]
        phase, micro = timeline.peak_phase
        held = ", ".join(f"{k} {format_bytes(v)}" for k, v in (timeline.peak_breakdown or {}).items() if v)
        rows.append((text(_label(row)), number(timeline.peak, format_bytes),
                     text(phase + (f" of micro-step {micro}" if micro is not None else "")),
                     text(held or "not known to this meter"),
                     number(timeline.allocator_peak, format_bytes)))
    return Table("timeline", ("case", "curve peak", "peak in", "held at the peak", "allocator peak"), tuple(rows))
