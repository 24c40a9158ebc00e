"""The line figures: memory and throughput against batch size.

Every builder takes a frame prepared by `accumbench.report.data.prepare` (any subset of it) and
returns a `Figure` with one panel per section and workload, or None when no record has what the
figure shows. Lines carry their legend label, so a test (or a curious user) can read the plotted
data back with `ax.get_lines()`.

Memory is drawn in one binary unit per panel (GiB on a GPU, often MiB for a small CPU model),
named in the axis label.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from accumbench.report.data import FIT_GROUP, scenario_name
from accumbench.report.layout import (
    DEVICE_LINE_COLOR, OOM_COLOR, Panel, crowded_y, finish_axes, fit_height, grid, line_styles,
    lines_in_order, log2_batch_axis, log_ylim, panel_rows, panels_by, zero_based_ylim,
)
from accumbench.report.units import format_bytes, memory_unit

OOM_LABEL = "out of memory: × at the predicted peak (fitted line), not measured"
PREDICTED_TEXT = "predicted"
OOM_UNPLACED_LABEL = "out of memory (peak unknown)"
EFFECTIVE_BATCH_LABEL = "effective batch (samples per optimizer step)"


def with_several_batches(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of workloads measured at two or more effective batches in their section.

    A workload measured at one batch size makes no line; its numbers are in the tables only.
    """
    counts = frame.groupby(["section", "workload"])["effective_batch"].transform("nunique")
    return frame[counts > 1]


def device_memory_label(total: float) -> str:
    """Legend label of the device's total memory line."""
    return f"device memory ({format_bytes(total)})"


def memory_vs_effective_batch(frame: pd.DataFrame) -> Figure | None:
    """Peak allocated memory against effective batch: the headline figure.

    One line for the large batch, one per micro-batch for accumulation. A case that ran out of
    memory is a red x at its effective batch, at the peak the panel's memory-vs-micro-batch line
    predicts for it (dotted from the last point that fitted, labelled "predicted": it was never
    measured), or, with no fitted line, on the device-memory line, or else at the top of the
    panel. Lines are told apart by colour, marker and a direct label at their end; a panel whose
    values span more than `LOG_Y_SPAN` gets a log y axis. The device's total memory is a dashed
    horizontal line when the records know it.
    """
    # Ok rows without a peak (gradient-equivalence records of `accumbench check`) have no memory.
    measured = (frame["status"] == "ok") & frame["peak_allocated"].notna()
    drawable = with_several_batches(frame[measured | (frame["status"] == "oom")])
    if drawable.empty:
        return None
    panels = panels_by(drawable, ["section", "workload"])
    fig, axes = grid(len(panels))
    rows = [_memory_panel(ax, panel, line_styles(panel_rows(frame, panel)))
            for ax, panel in zip(axes, panels)]
    fit_height(fig, rows)
    return fig


# The device-memory line is drawn when the panel's peaks reach this share of it; below, it
# would squash the data into the bottom of the panel, so it is named in a corner instead.
DEVICE_LINE_MIN_SHARE = 0.25


def _memory_panel(ax: Axes, panel: Panel, styles: dict[str, dict]) -> int:
    data = panel.frame
    ok = data[data["status"] == "ok"]
    oom = data[data["status"] == "oom"]
    totals = sorted({int(t) for t in data["device_total_memory"].dropna()})
    measured = list(ok["peak_allocated"]) + list(oom["predicted_peak"].dropna())
    reached = max(measured, default=0)
    on_scale = [t for t in totals if not measured or reached >= DEVICE_LINE_MIN_SHARE * t]
    off_scale = [t for t in totals if t not in on_scale]
    scale_values = measured + on_scale
    unit, size = memory_unit(max(scale_values, default=1))

    for label, line in lines_in_order(ok):
        ax.plot(line["effective_batch"], line["peak_allocated"] / size, label=label,
                linewidth=2.2 if line["scenario"].iloc[0] == "large-batch" else 1.6,
                markersize=5, **styles[label])
        end = line.iloc[-1]
        if end["scenario"] == "accumulated" and len(line) > 1:
            # A direct label at the line's end: no need to match colours against the legend.
            ax.annotate(f"mb {end['micro_batch']}", (end["effective_batch"], end["peak_allocated"] / size),
                        xytext=(4, 0), textcoords="offset points", fontsize=7, va="center",
                        color=styles[label]["color"])

    for total in on_scale:
        ax.axhline(total / size, linestyle="--", color=DEVICE_LINE_COLOR, linewidth=1.2,
                   label=device_memory_label(total))
    if off_scale:
        ax.text(0.02, 0.97, ", ".join(device_memory_label(t) for t in off_scale)
                + ": far above", transform=ax.transAxes, ha="left", va="top", fontsize=8,
                color=DEVICE_LINE_COLOR)

    placed_x, placed_y, unplaced_x = [], [], []
    for row in oom.sort_values("effective_batch").itertuples():
        y = row.predicted_peak if not math.isnan(row.predicted_peak) else (
            on_scale[0] if on_scale else None)
        if y is None:
            unplaced_x.append(row.effective_batch)
            continue
        placed_x.append(row.effective_batch)
        placed_y.append(y / size)
        before = ok[(ok["line"] == row.line) & (ok["effective_batch"] < row.effective_batch)]
        if not math.isnan(row.predicted_peak) and not before.empty:
            last = before.sort_values("effective_batch").iloc[-1]
            # Dotted: the extrapolation of the line up to where the case would have peaked.
            ax.plot([last["effective_batch"], row.effective_batch],
                    [last["peak_allocated"] / size, y / size], linestyle=":", linewidth=1.4,
                    color=styles[row.line]["color"], label="_extrapolation")
    if placed_x:
        ax.plot(placed_x, placed_y, linestyle="none", marker="x", markersize=11,
                markeredgewidth=2.5, color=OOM_COLOR, label=OOM_LABEL, zorder=5)
        for x, y in zip(placed_x, placed_y):
            ax.annotate(PREDICTED_TEXT, (x, y), xytext=(0, 8), textcoords="offset points",
                        ha="center", fontsize=7, color=OOM_COLOR, fontstyle="italic")
    if unplaced_x:
        # x in data coordinates, y in axes coordinates: pinned to the top of the panel.
        ax.plot(unplaced_x, [0.95] * len(unplaced_x), linestyle="none", marker="x",
                markersize=11, markeredgewidth=2.5, color=OOM_COLOR, label=OOM_UNPLACED_LABEL,
                transform=ax.get_xaxis_transform(), zorder=5)

    log2_batch_axis(ax, data["effective_batch"], EFFECTIVE_BATCH_LABEL)
    if crowded_y(scale_values):
        log_ylim(ax, min(v for v in scale_values if v > 0) / size, max(scale_values) / size)
        ax.set_ylabel(f"peak allocated memory ({unit}, log scale)")
    else:
        zero_based_ylim(ax, max(scale_values, default=0) / size)
        ax.set_ylabel(f"peak allocated memory ({unit})")
    return finish_axes(ax, panel.title, legend_below=True)


THROUGHPUT_METRICS = {
    "samples": ("samples_per_s_", "samples/s"),
    "tokens": ("tokens_per_s_", "tokens/s"),
}


def throughput_vs_effective_batch(frame: pd.DataFrame, metric: str = "samples") -> Figure | None:
    """Throughput (`metric`: 'samples' or 'tokens' per second) against effective batch.

    The point is the median step; the error bar spans the step-time quartiles (the slowest
    quarter of steps gives the low end). Cases that did not run are red x marks at the bottom.
    """
    column, unit = THROUGHPUT_METRICS[metric]
    values = pd.to_numeric(frame[column], errors="coerce").where(frame["status"] == "ok")
    data = frame.assign(rate=values)
    with_rates = data.groupby(["section", "workload"])["rate"].transform("count") > 0
    data = with_several_batches(data[with_rates])
    if data.empty:
        return None
    panels = panels_by(data, ["section", "workload"])
    fig, axes = grid(len(panels))
    rows = [_throughput_panel(ax, panel, line_styles(panel_rows(frame, panel)), unit)
            for ax, panel in zip(axes, panels)]
    fit_height(fig, rows)
    return fig


def _throughput_panel(ax: Axes, panel: Panel, styles: dict[str, dict], unit: str) -> int:
    data = panel.frame
    ok = data[data["rate"].notna()]
    largest = 0.0
    for label, line in lines_in_order(ok):
        y = line["rate"]
        ax.plot(line["effective_batch"], y, label=label, markersize=5, linewidth=1.6,
                **styles[label])
        # Rate scales as 1/step time: the slow quartile is the low end of the bar.
        low = y * line["step_median_s"] / line["step_q75_s"]
        high = y * line["step_median_s"] / line["step_q25_s"]
        largest = max(largest, y.max(), high.max(skipna=True) if high.notna().any() else 0)
        spread = low.notna() & high.notna()
        if spread.any():
            ax.errorbar(line["effective_batch"][spread], y[spread],
                        # Clipped at 0: a recorded rate a rounding away from batch / median (a
                        # record not made by this version) would put a bar end past the point.
                        yerr=[(y - low)[spread].clip(lower=0), (high - y)[spread].clip(lower=0)], fmt="none",
                        ecolor=styles[label]["color"], capsize=3, linewidth=1, label="_spread")
    failed = data[data["status"] != "ok"]
    if not failed.empty:
        ax.plot(failed["effective_batch"], [0.03] * len(failed), linestyle="none", marker="x",
                markersize=9, markeredgewidth=2, color=OOM_COLOR,
                label="did not run (OOM or error)", transform=ax.get_xaxis_transform())
    log2_batch_axis(ax, data["effective_batch"], EFFECTIVE_BATCH_LABEL)
    zero_based_ylim(ax, largest)
    ax.set_ylabel(f"throughput ({unit}, median and quartiles)")
    return finish_axes(ax, panel.title, legend_below=True)


def fit_label(bytes_per_sample: float, intercept: float) -> str:
    """Legend text of a fitted memory line: '12.00 MiB/sample + 1.50 GiB'."""
    return f"fit: {format_bytes(bytes_per_sample)}/sample + {format_bytes(intercept)}"


def memory_vs_micro_batch(frame: pd.DataFrame, fits: pd.DataFrame) -> Figure | None:
    """Measured peaks against micro-batch with the least-squares line of each scenario.

    `fits` is `accumbench.report.data.memory_fits(frame)`. Points are the successful records
    (label: the scenario), lines the fits (label: starts with 'fit:'), drawn from micro-batch 0
    so the intercept, the fixed cost, is visible.
    """
    if fits.empty:
        return None
    fitted = fits[["section", "workload"]].drop_duplicates()
    data = frame.merge(fitted, on=["section", "workload"])
    data = data[(data["status"] == "ok") & data["peak_allocated"].notna()]
    panels = panels_by(data, ["section", "workload"])
    fig, axes = grid(len(panels))
    fit_height(fig, [_fit_panel(ax, panel, fits) for ax, panel in zip(axes, panels)])
    return fig


def _fit_panel(ax: Axes, panel: Panel, fits: pd.DataFrame) -> int:
    data = panel.frame
    here = fits.merge(data[FIT_GROUP].drop_duplicates(), on=FIT_GROUP)
    unit, size = memory_unit(data["peak_allocated"].max())
    styles = line_styles(data.assign(line=data["scenario"] + data["variant"]))
    for fit in here.itertuples():
        points = data[(data["scenario"] == fit.scenario) & (data["variant"] == fit.variant)]
        style = styles[fit.scenario + fit.variant]
        name = scenario_name(fit.scenario) + (f" ({fit.variant})" if fit.variant else "")
        ax.plot(points["micro_batch"], points["peak_allocated"] / size, linestyle="none",
                markersize=6, label=name, **style)
        xs = [0, fit.max_micro_batch]
        ax.plot(xs, [(fit.intercept_bytes + fit.bytes_per_sample * x) / size for x in xs],
                color=style["color"], linewidth=1.2, linestyle="-", alpha=0.8,
                label=fit_label(fit.bytes_per_sample, fit.intercept_bytes))
    ax.set_xlim(left=0)
    zero_based_ylim(ax, data["peak_allocated"].max() / size)
    ax.set_xlabel("micro-batch (samples per forward/backward)")
    ax.set_ylabel(f"peak allocated memory ({unit})")
    return finish_axes(ax, panel.title, legend_below=True)
