"""What a report is made of: figure kinds, and each section's figures with their tables.

Plain values shared by `build` (which makes them) and `html` / `markdown` (which render them),
so the renderers never import the builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

from accumbench.report.tables import Table


@dataclass(frozen=True)
class FigureKind:
    """One kind of figure: file name, heading, what it shows, and how to make it and its tables.

    `build(frame, fits)`, `tables(frame, fits)` and `findings(frame, fits)` get the rows of one
    section (or all rows, for the top-level file) and the memory fits of those rows. `absent`
    says why the figure is missing when `build` returns None; `optional` figures are then left
    out without a word (e.g. tokens/s for a workload without tokens). An `across_sections`
    figure joins rows of different sections (predictions and the measurements of another
    device): with several sections it is built once from every row and shown in a section of
    its own after theirs.
    """

    name: str
    title: str
    caption: str
    build: Callable[[pd.DataFrame, pd.DataFrame], Figure | None]
    tables: Callable[[pd.DataFrame, pd.DataFrame], tuple[Table, ...]]
    findings: Callable[[pd.DataFrame, pd.DataFrame], list[str]]
    absent: str
    optional: bool = False
    across_sections: bool = False


@dataclass(frozen=True)
class FigureBlock:
    """One figure of one section as the page shows it, with its tables.

    `png` and `file` are None when the figure could not be drawn but its tables have rows
    (e.g. every workload measured at a single batch size); `kind.absent` then says why.
    """

    kind: FigureKind
    file: str | None
    png: bytes | None
    tables: tuple[Table, ...]
    findings: tuple[str, ...]
    svg_beside: bool = True  # False: the SVG is the top-level file with every section


@dataclass(frozen=True)
class SectionReport:
    """Everything the page shows for one section (one device and results file, or the figures
    across them)."""

    title: str
    slug: str
    environment: Table
    blocks: tuple[FigureBlock, ...]
    absent: tuple[str, ...]
    failures: Table
    # How noisy the section's machine was, and (cpu meter) what its throughput is worth.
    noise: tuple[str, ...] = ()
    # True for the section of figures that join the others (predicted vs measured): it holds no
    # results of its own, so counts of sections leave it out.
    across: bool = False
