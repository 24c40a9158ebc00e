"""Shared figure plumbing: panel grids, line styles, the log2 batch axis, saving PNG and SVG.

Matplotlib's object API only (`Figure()`), never pyplot: no global state, so building figures
in tests, threads or a long-lived process leaves nothing behind.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

PNG_DPI = 110
MAX_COLUMNS = 2
PANEL_SIZE = (6.2, 5.0)  # inches; two panels side by side fill the page's width

LARGE_BATCH_COLOR = "#1b1b1b"
OOM_COLOR = "#d62728"
DEVICE_LINE_COLOR = "#7f7f7f"
# tab10 without its red (kept for out-of-memory marks) and grey (kept for the device line).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf")
SCENARIO_MARKERS = {"large-batch": "o", "accumulated": "s", "multitask-combined": "^",
                    "multitask-sequential": "v"}
# Accumulation lines (one per micro-batch) cycle through these with the palette: neighbours
# differ in hue and in marker, so eight lines on top of each other can still be told apart (and
# in greyscale). 12 markers x 8 colours: no two of 24 lines look alike.
LINE_MARKERS = ("s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "d")
# A panel whose drawn values span more than this factor gets a log y axis: lines that crowd
# near zero under a tall one (on an 80 GB card, accumulation's few GiB under the large batch's
# tens) spread out.
LOG_Y_SPAN = 16.0
FOOTER_FONT_SIZE = 7


@dataclass(frozen=True, eq=False)
class Panel:
    """One axes' worth of data: a title and the records drawn in it."""

    title: str
    frame: pd.DataFrame


def panels_by(frame: pd.DataFrame, keys: Sequence[str]) -> list[Panel]:
    """Split a prepared frame into panels, one per distinct value of `keys`, in input order.

    `keys` starts with `section`; the title names the other keys' values and, when the frame
    spans several sections, the section, so that no panel mixes two devices or files.
    """
    several = frame["section"].nunique() > 1
    result = []
    for key, group in frame.groupby(list(keys), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        parts = [str(v) for k, v in zip(keys, key) if k != "section"]
        if several:
            parts.append(group["section_title"].iloc[0])
        result.append(Panel(title="\n".join(parts), frame=group))
    return result


def grid(count: int, panel_size: tuple[float, float] = PANEL_SIZE,
         columns: int = MAX_COLUMNS) -> tuple[Figure, list[Axes]]:
    """A figure with `count` panels, `columns` to a row, and exactly `count` axes in it."""
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    fig = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), layout="constrained")
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax in axes[count:]:
        ax.remove()  # so that fig.axes holds only panels with data
    return fig, axes[:count]


def line_styles(frame: pd.DataFrame) -> dict[str, dict]:
    """Colour and marker per line label of one panel's records (all statuses).

    The large batch is black with round markers (the reference the eye compares against);
    accumulation lines, in micro-batch order, take a qualitative palette and a marker each, so
    that neighbouring micro-batches differ in both (a sequential colour map made 1, 2, 4 and 8
    indistinguishable); any other line takes the palette and its scenario's marker. Computed
    from the panel's full records, the same workload gets the same styles in every figure.
    """
    styles: dict[str, dict] = {}
    ordered = frame.sort_values("line_order", kind="stable").drop_duplicates("line")
    accumulated = [r.line for r in ordered.itertuples() if r.scenario == "accumulated"]
    distinct = {label: {"color": PALETTE[i % len(PALETTE)], "marker": LINE_MARKERS[i % len(LINE_MARKERS)]}
                for i, label in enumerate(accumulated)}
    colours = iter(PALETTE * (1 + len(ordered) // len(PALETTE)))
    large_seen = False
    for row in ordered.itertuples():
        if row.scenario == "large-batch" and not large_seen:
            styles[row.line], large_seen = {"color": LARGE_BATCH_COLOR, "marker": "o"}, True
        elif row.line in distinct:
            styles[row.line] = distinct[row.line]
        else:
            styles[row.line] = {"color": next(colours), "marker": SCENARIO_MARKERS.get(row.scenario, "D")}
    return styles


def crowded_y(values: Iterable[float]) -> bool:
    """True when positive `values` span more than `LOG_Y_SPAN`: a linear axis would crowd the
    small ones near zero."""
    positive = [float(v) for v in values if v == v and v > 0]
    return len(positive) > 1 and max(positive) / min(positive) > LOG_Y_SPAN


def log_ylim(ax: Axes, smallest: float, largest: float) -> None:
    """A log y axis from a little below `smallest` to a little above `largest`."""
    ax.set_yscale("log")
    ax.set_ylim(smallest / 1.5, largest * 1.5)


def provenance_text(frame: pd.DataFrame) -> str:
    """One line of where and with what the records were made: device, meter, torch, accumbench
    version, commit and date(s), every distinct value listed (from the records' provenance)."""
    def values(column: str, shorten=lambda v: v) -> str:
        if column not in frame.columns:
            return "?"
        found = [shorten(str(v)) for v in dict.fromkeys(frame[column])
                 if v is not None and v == v and str(v) != ""]
        return ", ".join(found) or "?"

    dates = sorted({str(t)[:10] for t in frame.get("timestamp", []) if isinstance(t, str) and t})
    date = (dates[0] if len(dates) == 1 else f"{dates[0]} – {dates[-1]}") if dates else "?"
    return (f"{values('device_name')} · {values('meter')} meter · torch {values('torch_version')} · "
            f"accumbench {values('accumbench_version')} · commit {values('git_commit', lambda v: v[:10])}"
            f" · measured {date}")


def add_footer(fig: Figure, text: str) -> None:
    """Write `text` under the panels (as the figure's supxlabel, so the layout makes room and a
    pasted PNG or SVG still says what made it)."""
    fig.supxlabel(text, x=0.01, ha="left", fontsize=FOOTER_FONT_SIZE, color=DEVICE_LINE_COLOR)


def panel_rows(frame: pd.DataFrame, panel: "Panel") -> pd.DataFrame:
    """All records of `frame` in the panel's section and workload, whatever their status."""
    key = panel.frame.iloc[0]
    return frame[(frame["section"] == key["section"]) & (frame["workload"] == key["workload"])]


def lines_in_order(frame: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    """(label, records sorted by effective batch) per line of a panel, in legend order.

    An accumulation line that has no one-step record starts from the large batch at its
    micro-batch (when the panel has it): accumulating one step is the large batch, and the
    shared point shows where the flat accumulation line leaves the climbing large-batch line.
    """
    order = {}
    for label, key in zip(frame["line"], frame["line_order"]):
        order.setdefault(label, key)
    for label in sorted(order, key=order.__getitem__):
        line = frame[frame["line"] == label]
        first = line.iloc[0]
        if first["scenario"] == "accumulated" and (line["accum_steps"] > 1).all():
            anchor = frame[(frame["scenario"] == "large-batch")
                           & (frame["micro_batch"] == first["micro_batch"])
                           & (frame["variant"] == first["variant"])]
            line = pd.concat([anchor.iloc[:1], line])
        yield label, line.sort_values("effective_batch")


def log2_batch_axis(ax: Axes, values: Iterable[int], label: str) -> None:
    """A base-2 log x axis ticked at the batch sizes that occur, labelled as plain integers."""
    ticks = sorted({int(v) for v in values})
    ax.set_xscale("log", base=2)
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xlim(ticks[0] / 1.4, ticks[-1] * 1.4)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(label)


def zero_based_ylim(ax: Axes, largest: float) -> None:
    """y from 0 to a little above `largest`, so that small differences near the top of a tall
    quantity are not mistaken for the whole story and the top point is not on the frame."""
    ax.set_ylim(0, largest * 1.08 if largest > 0 else 1)


LEGEND_ROW_INCHES = 0.19


def finish_axes(ax: Axes, title: str, legend_below: bool = False, columns: int = 5) -> int:
    """Common look: title, light grid, a legend when something is labelled.

    `legend_below` puts the legend under the axes, where it hides no data, in up to `columns`
    columns (fewer for long labels, so that the legend is never wider than the axes). Returns
    the number of legend rows under the axes (0 otherwise), for `fit_height`.
    """
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return 0
    if not legend_below:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
        return 0
    longest = max(len(label) for label in labels)
    fit = 1 if longest > 34 else 2 if longest > 22 else 3
    ncols = min(len(handles), columns, fit)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=ncols,
              frameon=False)
    return -(-len(handles) // ncols)


def fit_height(fig: Figure, legend_rows: Sequence[int], columns: int = MAX_COLUMNS,
               plot_height: float = 4.2) -> None:
    """Make each row of panels tall enough for its plot and the longest legend under it."""
    rows = [max(legend_rows[i:i + columns], default=0)
            for i in range(0, len(legend_rows), columns)]
    width = fig.get_size_inches()[0]
    fig.set_size_inches(width, sum(plot_height + LEGEND_ROW_INCHES * r for r in rows))


def save(fig: Figure, directory: Path, name: str, svg: bool = True) -> bytes:
    """Write `name.png` (and `name.svg` unless `svg` is False) into `directory`; return the PNG
    bytes for embedding."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI)
    png = buffer.getvalue()
    (directory / f"{name}.png").write_bytes(png)
    if svg:
        # The layout was solved while drawing the PNG; freezing it makes the SVG cheaper.
        fig.set_layout_engine("none")
        # No date in the SVG, so the same results make the same file (diffable, cacheable).
        fig.savefig(directory / f"{name}.svg", format="svg", metadata={"Date": None})
    return png
