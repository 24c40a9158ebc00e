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
    """Colour and marker per line label, the same in every panel and figure of a report.

    The large batch is black (the reference the eye compares against); the other lines take
    the palette in line order.
    """
    styles: dict[str, dict] = {}
    ordered = frame.sort_values("line_order", kind="stable").drop_duplicates("line")
    colours = iter(PALETTE * (1 + len(ordered) // len(PALETTE)))
    for row in ordered.itertuples():
        if row.scenario == "large-batch" and not row.variant:
            colour = LARGE_BATCH_COLOR
        else:
            colour = next(colours)
        styles[row.line] = {"color": colour, "marker": SCENARIO_MARKERS.get(row.scenario, "D")}
    return styles


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


def finish_axes(ax: Axes, title: str, legend_below: bool = False, columns: int = 5) -> None:
    """Common look: title, light grid, a legend when something is labelled.

    `legend_below` puts the legend under the axes, in up to `columns` columns, where it can
    hide no data.
    """
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if legend_below:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17),
                  ncols=min(len(handles), columns), frameon=False)
    else:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)


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
