"""The bar figures: multi-task strategies, where the memory goes, gradient equivalence.

Same conventions as `figures`: prepared frame in, `Figure` (or None when no record carries what
the figure shows) out; every bar series is a labelled `BarContainer` in `ax.containers`, so the
drawn values can be read back.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from accumbench.records import BREAKDOWN_CATEGORIES
from accumbench.report.data import in_display_order, scenario_name
from accumbench.report.layout import OOM_COLOR, PANEL_SIZE, finish_axes, grid, panels_by
from accumbench.report.units import memory_unit

MULTITASK_SCENARIOS = ("multitask-combined", "multitask-sequential")
MULTITASK_COLORS = {"multitask-combined": "#ff7f0e", "multitask-sequential": "#1f77b4"}
BREAKDOWN_COLORS = {"params": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868",
                    "activations": "#c44e52", "other": "#8c8c8c"}
VERDICT_COLORS = {"equivalent": "#2ca02c", "not-equivalent": "#d62728"}


def multitask_key(row: Any) -> str:
    """Category label of a multi-task case: workload, then layout and micro-batch x steps."""
    layout = row.layout if isinstance(row.layout, str) and row.layout else "layout ?"
    label = f"{row.workload}\n{layout}, {row.micro_batch}×{row.accum_steps}"
    return label + (f"\n{row.variant}" if row.variant else "")


def multitask_comparison(frame: pd.DataFrame) -> Figure | None:
    """Combined loss vs sequential backward, per layout: peak memory and throughput side by side.

    One row per section, two panels of horizontal bars (so that long workload names never
    overlap): memory (left) and samples/s (right), one pair of bars per configuration, the
    combined loss above the sequential backward. A case that did not run has no bar and its
    status written instead. The sequential bar is annotated with its difference from the
    combined one.
    """
    data = frame[frame["scenario"].isin(MULTITASK_SCENARIOS)]
    if data.empty:
        return None
    data = data.assign(category=[multitask_key(r) for r in data.itertuples()])
    panels = panels_by(data, ["section"])
    most = max(p.frame["category"].nunique() for p in panels)
    fig, axes = grid(2 * len(panels), columns=2,
                     panel_size=(PANEL_SIZE[0], 1.9 + 0.62 * most))
    for i, panel in enumerate(panels):
        _multitask_panel(axes[2 * i], panel, "peak_allocated", memory=True)
        _multitask_panel(axes[2 * i + 1], panel, "samples_per_s_", memory=False)
    return fig


def paired_bars(ax: Axes, data: pd.DataFrame, categories: list[str], values: pd.Series, series_column: str,
                series: tuple[str, str], colors: dict[str, str], labels: dict[str, str] | None = None,
                show_categories: bool = True, speed: bool = False) -> None:
    """Two horizontal bars per category, `series[0]` above `series[1]` (rows of `data` by their
    `series_column`, matched to categories by their `category` column; widths from `values`,
    aligned with `data`). A case that did not run has no bar and its status written instead; the
    second bar is annotated with its change from the first; for a `speed` (throughput) panel the
    change is the ratio with its 95% interval, or "no measurable difference". First category
    on top."""
    height = 0.38
    by_series: dict[str, dict[str, float]] = {}
    for offset, name in zip((-height / 2, height / 2), series):
        rows = data[data[series_column] == name]
        widths = {c: math.nan for c in categories}
        statuses = dict(zip(rows["category"], rows["status"]))
        for category, value in zip(rows["category"], values[rows.index]):
            widths[category] = value
        by_series[name] = widths
        ys = [i + offset for i in range(len(categories))]
        ax.barh(ys, [0.0 if math.isnan(w) else w for w in widths.values()], height=height,
                label=(labels or {}).get(name, name), color=colors[name])
        for y, cat in zip(ys, categories):
            if cat in statuses and statuses[cat] != "ok":
                # No bar for a case that did not run: say why where the bar would be.
                ax.text(0, y, " " + statuses[cat].upper(), ha="left", va="center",
                        color=OOM_COLOR, fontsize=8, fontweight="bold")
    first, second = (by_series[name] for name in series)
    for i, cat in enumerate(categories):
        a, b = first[cat], second[cat]
        if a and not (math.isnan(a) or math.isnan(b)):
            label = f"{(b - a) / a:+.0%}".replace("-", "\u2212")
            if speed:
                from accumbench.report.findings import NO_DIFFERENCE, ratio_text, row_ratio

                rows = [next(data[(data["category"] == cat) & (data[series_column] == name)].itertuples())
                        for name in series]
                ratio = row_ratio(rows[1], rows[0])
                label = ratio_text(ratio).replace(NO_DIFFERENCE, "no measurable\ndifference").replace(" (a median", "\n(a median")
            ax.annotate(label, (b, i + height / 2),
                        ha="left", va="center", fontsize=8, xytext=(3, 0),
                        textcoords="offset points")
    ax.set_yticks(range(len(categories)), categories if show_categories else [""] * len(categories),
                  fontsize=8)
    ax.set_ylim(len(categories) - 0.5, -0.5)


def sync_pairs_figure(data: pd.DataFrame, category, panels: tuple[tuple[str, str], ...],
                      series: tuple[str, str], colors: dict[str, str]) -> Figure | None:
    """Synchronising every micro-step vs once per optimizer step, per accumulated configuration
    (DDP's `no_sync()`, FSDP's skipped reduce-scatter): one row of `panels` ((column, axis label)
    each) per section, one pair of bars (`paired_bars` over the `sync_` column, in `series`
    order) per `category(row)`. `data`: the distributed rows of a prepared frame; None when none
    accumulated."""
    data = data[data["scenario"] == "accumulated"]
    if data.empty:
        return None
    data = in_display_order(data)
    data = data.assign(category=[category(r) for r in data.itertuples()])
    sections = panels_by(data, ["section"])
    most = max(p.frame["category"].nunique() for p in sections)
    fig, axes = grid(len(panels) * len(sections), columns=len(panels),
                     panel_size=(PANEL_SIZE[0] * 0.8, 1.9 + 0.62 * most))
    for i, section in enumerate(sections):
        rows = section.frame
        for j, (column, label) in enumerate(panels):
            ax = axes[len(panels) * i + j]
            values = pd.to_numeric(rows[column], errors="coerce").where(rows["status"] == "ok")
            speed = column == "samples_per_s_"
            paired_bars(ax, rows, list(dict.fromkeys(rows["category"])), values, "sync_", series, colors,
                        show_categories=j == 0, speed=speed)
            ax.set_xlabel(label, fontsize=8)
            ax.margins(x=0.45 if speed else 0.15)
            finish_axes(ax, label.split(" (")[0] + (f"\n{section.title}" if section.title else ""),
                        legend_below=True)
    return fig


def _multitask_panel(ax: Axes, panel, column: str, memory: bool) -> None:
    data = panel.frame
    categories = list(dict.fromkeys(data.sort_values(["workload", "micro_batch"])["category"]))
    values = pd.to_numeric(data[column], errors="coerce").where(data["status"] == "ok")
    unit, size = memory_unit(values.max()) if memory and values.notna().any() else ("", 1)
    paired_bars(ax, data, categories, values / size, "scenario", MULTITASK_SCENARIOS, MULTITASK_COLORS,
                {s: scenario_name(s) for s in MULTITASK_SCENARIOS}, speed=not memory)
    ax.set_xlabel(f"peak allocated memory ({unit})" if memory
                  else "throughput (samples/s); labels: sequential / combined, 95% interval")
    ax.margins(x=0.12 if memory else 0.45)  # room for the ratio and its interval
    finish_axes(ax, ("peak memory" if memory else "throughput")
                + (f"\n{panel.title}" if panel.title else ""), legend_below=True)


def breakdown_label(row: Any) -> str:
    """Bar label of a breakdown: scenario and micro-batch x accumulation steps."""
    label = f"{scenario_name(row.scenario)} {row.micro_batch}×{row.accum_steps}"
    return label + (f" ({row.variant})" if row.variant else "")


def memory_breakdown(frame: pd.DataFrame) -> Figure | None:
    """Where the peak goes: params, grads, optimizer state, activations, other, stacked.

    One horizontal bar per successful record that carries a breakdown, one panel per section and
    workload. Categories absent from a breakdown count as zero.
    """
    has = frame["breakdown"].map(lambda b: isinstance(b, dict) and bool(b))
    data = frame[has & (frame["status"] == "ok")]
    if data.empty:
        return None
    data = in_display_order(data)
    panels = panels_by(data, ["section", "workload"])
    most = max(len(p.frame) for p in panels)
    fig, axes = grid(len(panels), panel_size=(PANEL_SIZE[0], 1.6 + 0.32 * most))
    for ax, panel in zip(axes, panels):
        _breakdown_panel(ax, panel)
    return fig


def _breakdown_panel(ax: Axes, panel) -> None:
    data = panel.frame
    totals = [sum(v for v in b.values() if isinstance(v, (int, float))) for b in data["breakdown"]]
    unit, size = memory_unit(max(totals, default=1))
    labels = [breakdown_label(r) for r in data.itertuples()]
    left = [0.0] * len(data)
    for category in BREAKDOWN_CATEGORIES:
        widths = [float(b.get(category) or 0) / size for b in data["breakdown"]]
        ax.barh(range(len(data)), widths, left=left, label=category,
                color=BREAKDOWN_COLORS[category], height=0.7)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(data)), labels, fontsize=8)
    ax.invert_yaxis()  # first record on top, as in the table below the figure
    ax.set_xlabel(f"memory at the peak ({unit})")
    ax.margins(x=0.02)
    finish_axes(ax, panel.title, legend_below=True)


def equivalence_label(row: Any) -> str:
    """Bar label of an equivalence result: workload, accumulation steps, dtype when known."""
    eq = row.equivalence
    steps = eq.get("accum_steps", row.accum_steps)
    label = f"{row.workload}, {steps} steps"
    if eq.get("dtype"):
        label += f", {eq['dtype']}"
    return label + (f" ({row.variant})" if row.variant else "")


def has_rel_error(value: Any) -> bool:
    """True for an equivalence dict with a finite, non-negative numeric `rel_error`."""
    if not isinstance(value, dict):
        return False
    err = value.get("rel_error")
    return isinstance(err, (int, float)) and not isinstance(err, bool) and math.isfinite(err) \
        and err >= 0


def gradient_equivalence(frame: pd.DataFrame) -> Figure | None:
    """Relative gradient error of accumulation vs one large batch, as points on a log axis.

    One point per record whose `equivalence` block has a numeric `rel_error`: green when its
    verdict is 'equivalent', red when 'not-equivalent', grey otherwise (one labelled line per
    verdict, points on the rows of their records); one panel per section. A zero error is drawn
    a decade below the smallest positive one, so that it stays on the log axis.
    """
    data = frame[frame["equivalence"].map(has_rel_error)]
    if data.empty:
        return None
    panels = panels_by(data, ["section"])
    most = max(len(p.frame) for p in panels)
    fig, axes = grid(len(panels), panel_size=(PANEL_SIZE[0] * 1.4, 1.5 + 0.4 * most), columns=1)
    for ax, panel in zip(axes, panels):
        rows = panel.frame
        errors = [float(e["rel_error"]) for e in rows["equivalence"]]
        floor = min((e for e in errors if e > 0), default=1e-12) / 10
        verdicts = [e.get("verdict") if e.get("verdict") in VERDICT_COLORS else None
                    for e in rows["equivalence"]]
        for verdict in list(VERDICT_COLORS) + [None]:
            picked = [i for i, v in enumerate(verdicts) if v == verdict]
            if not picked:
                continue
            ax.plot([max(errors[i], floor) for i in picked], picked, linestyle="none",
                    marker="o", markersize=9, color=VERDICT_COLORS.get(verdict, "#8c8c8c"),
                    label=verdict or "no verdict")
        for i, err in enumerate(errors):
            ax.annotate(f"{err:.2g}", (max(err, floor), i), xytext=(8, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), [equivalence_label(r) for r in rows.itertuples()],
                      fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first record on top
        ax.set_xscale("log")
        low = min(max(e, floor) for e in errors)
        ax.set_xlim(low / 10, max(errors + [low]) * 30)
        ax.set_xlabel("relative gradient error, accumulated vs large batch (log scale)")
        finish_axes(ax, panel.title)
    return fig
