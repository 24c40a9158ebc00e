"""The report: figures (PNG and SVG), one self-contained HTML page and a Markdown summary.

`build_report(results_files_or_frame, out_dir)` is the entry point; it reads DataFrames only
(see `accumbench.records.load_results`). Modules, one job each: `data` (validation, sections,
derived columns), `figures` and `bars` (matplotlib figures), `tables` (the numbers),
`findings` (one-line readings), `html` and `markdown` (rendering), `build` (assembly).
"""

from __future__ import annotations

from accumbench.report.build import FIGURES, ReportResult, build_report
from accumbench.report.data import ReportInputError

__all__ = ["FIGURES", "ReportInputError", "ReportResult", "build_report"]
