"""The numbers under each figure, as format-neutral tables.

A `Table` holds cells that carry both the text a person reads ('1.50 GiB') and the raw value it
came from (1610612736), so the HTML page can keep the raw value in a `data-value` attribute and
tests can compare the page with the records exactly. `html` and `markdown` render tables; this
module only decides what is in them.

Every builder takes the rows of one section of a prepared frame (see `data.prepare`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from accumbench.fit import MIN_POINTS_FOR_R2
from accumbench.records import BREAKDOWN_CATEGORIES
from accumbench.report.data import in_display_order, scenario_name
from accumbench.report.findings import ratio_text, row_ratio
from accumbench.report.units import (
    MISSING, format_bytes, format_percent, format_rate, format_ratio, format_seconds, is_missing,
)


@dataclass(frozen=True)
class Cell:
    """One table cell: display text, the raw value behind it (None for plain text)."""

    text: str
    value: Any = None

    @property
    def numeric(self) -> bool:
        """Right-aligned when it shows a number."""
        return isinstance(self.value, (int, float)) and not isinstance(self.value, bool)


@dataclass(frozen=True)
class Table:
    """A titled grid of cells; `name` identifies it in the page (an HTML id suffix)."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]

    def column(self, title: str) -> list[Cell]:
        """The cells of one column, top to bottom."""
        index = self.columns.index(title)
        return [row[index] for row in self.rows]


def text(value: Any) -> Cell:
    """A plain-text cell ('—' when missing)."""
    return Cell(MISSING if is_missing(value) else str(value))


def number(value: Any, formatter=str) -> Cell:
    """A numeric cell: formatted text plus the raw value (None when missing)."""
    if is_missing(value):
        return Cell(MISSING)
    raw = value.item() if hasattr(value, "item") else value
    if isinstance(raw, float) and raw.is_integer() and abs(raw) < 2**53:
        # Bytes come back as floats from a pandas column that also holds NaN: keep them exact.
        raw = int(raw)
    return Cell(formatter(value), raw)


def case_text(row: Any) -> str:
    """'large batch' or 'accumulated, micro-batch 8', the line the record is drawn on."""
    return row.line


def routing_bounds_text(row: Any) -> str:
    """' (MoE routing: balanced 5.2 MiB, worst 5.0 MiB)' for an estimate whose peak depends on the
    `moe_routing` assumption and whose two bounds differ; else ''."""
    assumptions = getattr(row, "assumptions", None)
    peaks = assumptions.get("moe_routing_peaks") if isinstance(assumptions, dict) else None
    if not peaks or len(set(peaks.values())) < 2:
        return ""
    return " (MoE routing: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in peaks.items()) + ")"


def memory_table(frame: pd.DataFrame) -> Table:
    """Peak memory per case, with the device share and, for failed cases, the predicted peak."""
    rows = []
    for r in in_display_order(frame).itertuples():
        total = r.device_total_memory
        share = r.peak_allocated / total if not is_missing(total) and total and \
            not is_missing(r.peak_allocated) else math.nan
        rows.append((
            text(r.workload), text(case_text(r)), number(r.micro_batch), number(r.accum_steps),
            number(r.effective_batch), text(r.status),
            number(r.peak_allocated, lambda v, r=r: format_bytes(v) + routing_bounds_text(r)),
            number(r.first_step_peak_allocated, format_bytes),
            number(share, format_percent),
            number(r.predicted_peak, format_bytes),
        ))
    return Table("memory", ("workload", "case", "micro-batch", "accum steps", "effective batch",
                            "status", "peak allocated", "first-step peak", "of device memory",
                            "predicted peak (fit)"), tuple(rows))


def throughput_table(frame: pd.DataFrame) -> Table:
    """Throughput per successful case: samples/s, tokens/s, median step time and quartiles."""
    rows = []
    for r in in_display_order(frame[frame["status"] == "ok"]).itertuples():
        spread = (f"{format_seconds(r.step_q25_s)} – {format_seconds(r.step_q75_s)}"
                  if not is_missing(r.step_q25_s) else MISSING)
        interval = (f"{format_rate(r.samples_ci_low_, '')} – {format_rate(r.samples_ci_high_, '')}"
                    if not is_missing(r.samples_ci_low_) else "too few steps")
        samples = number(r.samples_per_s_, lambda v: format_rate(v, ""))
        if getattr(r, "meter", None) == "estimate":  # predicted, never timed: said as such (a text
            # cell: no value a figure or a highlight would read as measured)
            samples = text(None if is_missing(r.samples_per_s) else f"~{format_rate(r.samples_per_s, '')} predicted")
            interval = "none (an estimate)"
        rows.append((
            text(r.workload), text(case_text(r)), number(r.effective_batch),
            samples, text(interval),
            number(r.tokens_per_s_, lambda v: format_rate(v, "")),
            number(r.step_median_s, format_seconds), text(spread),
            number(len(r.step_times_s)), text(getattr(r, "stop_reason", None)),
        ))
    return Table("throughput", ("workload", "case", "effective batch", "samples/s",
                                "samples/s 95% CI", "tokens/s", "median step", "step quartiles",
                                "steps", "stopped by"), tuple(rows))


def fit_table(fits: pd.DataFrame) -> Table:
    """The memory lines: bytes per sample and fixed cost per workload and scenario."""
    rows = []
    for f in fits.itertuples():
        case = scenario_name(f.scenario) + (f" ({f.variant})" if f.variant else "")
        rows.append((
            text(f.workload), text(case), number(f.points),
            text(f"{f.min_micro_batch} – {f.max_micro_batch}"),
            number(f.bytes_per_sample, format_bytes),
            number(f.intercept_bytes, format_bytes),
            # r² of a line through 2 points is 1 by construction: not shown.
            number(f.r2 if f.points >= MIN_POINTS_FOR_R2 else None, lambda v: f"{v:.4f}"),
        ))
    return Table("fit", ("workload", "scenario", "points", "micro-batch range",
                         "bytes per sample", "intercept", "r²"), tuple(rows))


def multitask_table(frame: pd.DataFrame) -> Table:
    """Combined vs sequential per multi-task configuration, with the relative differences."""
    data = frame[frame["scenario"].isin(("multitask-combined", "multitask-sequential"))]
    rows = []
    keys = ["workload", "layout", "micro_batch", "accum_steps", "variant"]
    for key, group in data.groupby(keys, sort=False, dropna=False):
        by = {r.scenario: r for r in group.itertuples()}
        comb, seq = by.get("multitask-combined"), by.get("multitask-sequential")

        def _value(rec, column):
            return getattr(rec, column) if rec is not None and rec.status == "ok" else math.nan

        def _status(rec):
            return MISSING if rec is None else rec.status

        mem_c, mem_s = _value(comb, "peak_allocated"), _value(seq, "peak_allocated")
        thr_c, thr_s = _value(comb, "samples_per_s_"), _value(seq, "samples_per_s_")
        ratio = row_ratio(seq, comb) if not (is_missing(thr_c) or is_missing(thr_s)) else None
        layout = key[1] if isinstance(key[1], str) else MISSING
        rows.append((
            text(key[0]), text(layout), text(f"{key[2]}×{key[3]}" + (f" ({key[4]})" if key[4] else "")),
            text(f"{_status(comb)} / {_status(seq)}"),
            number(mem_c, format_bytes), number(mem_s, format_bytes),
            number(_relative(mem_s, mem_c), lambda v: format_percent(v, signed=True)),
            number(thr_c, lambda v: format_rate(v, "")), number(thr_s, lambda v: format_rate(v, "")),
            Cell(ratio_text(ratio) if ratio is not None else MISSING,
                 ratio.value if ratio is not None and ratio.differs else None),
        ))
    return Table("multitask", ("workload", "layout", "micro × steps", "status (comb. / seq.)",
                               "combined peak", "sequential peak", "memory change",
                               "combined samples/s", "sequential samples/s",
                               "throughput, sequential / combined (95% CI)"),
                 tuple(rows))


def _relative(new: float, old: float) -> float:
    if is_missing(new) or is_missing(old) or not old:
        return math.nan
    return (new - old) / old


def breakdown_table(frame: pd.DataFrame) -> Table:
    """The five memory categories per case that has a breakdown, and their sum."""
    has = frame["breakdown"].map(lambda b: isinstance(b, dict) and bool(b))
    rows = []
    for r in in_display_order(frame[has & (frame["status"] == "ok")]).itertuples():
        parts = [r.breakdown.get(c) for c in BREAKDOWN_CATEGORIES]
        total = sum(p for p in parts if isinstance(p, (int, float)))
        rows.append((text(r.workload), text(case_text(r)), number(r.effective_batch),
                     *(number(p, format_bytes) for p in parts), number(total, format_bytes),
                     number(r.peak_allocated, format_bytes)))
    return Table("breakdown", ("workload", "case", "effective batch", *BREAKDOWN_CATEGORIES,
                               "sum", "peak allocated"), tuple(rows))


EQUIVALENCE_KEYS = ("rel_error", "verdict", "accum_steps", "dtype", "worst_parameters", "causes")


def equivalence_table(frame: pd.DataFrame) -> Table:
    """Every record's `equivalence` block: the known keys in columns, any others in 'details'."""
    data = frame[frame["equivalence"].map(lambda e: isinstance(e, dict))]
    rows = []
    for r in data.itertuples():
        eq = r.equivalence
        rel = eq.get("rel_error")
        worst = eq.get("worst_parameters") or []
        worst_text = "; ".join(_worst_text(w) for w in worst[:3]) if isinstance(worst, list) \
            else str(worst)
        causes = eq.get("causes") or []
        causes_text = "; ".join(map(str, causes)) if isinstance(causes, list) else str(causes)
        others = ", ".join(f"{k}={v}" for k, v in eq.items() if k not in EQUIVALENCE_KEYS)
        rows.append((
            text(r.workload), text(case_text(r)), text(eq.get("accum_steps", r.accum_steps)),
            text(eq.get("dtype")),
            number(rel, format_ratio) if isinstance(rel, (int, float)) else text(rel),
            text(eq.get("verdict")), text(worst_text or None), text(causes_text or None),
            text(others or None),
        ))
    return Table("equivalence", ("workload", "case", "accum steps", "dtype", "relative error",
                                 "verdict", "worst parameters", "causes", "details"), tuple(rows))


def _worst_text(item: Any) -> str:
    if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], (int, float)):
        return f"{item[0]} ({item[1]:.2g})"
    return str(item)


def failures_table(frame: pd.DataFrame) -> Table:
    """Cases that did not run (OOM or error) with their message, shortened to one line."""
    rows = []
    for r in in_display_order(frame[frame["status"] != "ok"]).itertuples():
        message = r.error.strip().splitlines() if isinstance(r.error, str) else []
        short = message[-1] if message else None  # the last line of a traceback says what
        if short and len(short) > 160:
            short = short[:157] + "..."
        rows.append((text(r.workload), text(case_text(r)), number(r.effective_batch),
                     text(r.status), text(short)))
    return Table("failures", ("workload", "case", "effective batch", "status", "message"),
                 tuple(rows))


ENVIRONMENT_FIELDS = (
    ("device", "device_name"), ("meter", "meter"), ("world size", "world_size"),
    ("device memory", "device_total_memory"), ("torch", "torch_version"),
    ("CUDA", "cuda_version"), ("accumbench", "accumbench_version"), ("commit", "git_commit"),
    ("host", "hostname"), ("results file", "source"), ("run", "run_id"),
)


def environment_table(frame: pd.DataFrame) -> Table:
    """Where and with what the section was measured; every distinct value is listed."""
    rows = []
    for title, column in ENVIRONMENT_FIELDS:
        if column not in frame.columns:
            continue
        values = [v for v in dict.fromkeys(frame[column]) if not is_missing(v) and v != ""]
        if column == "device_total_memory":
            values = [format_bytes(v) for v in values]
        rows.append((Cell(title), text(", ".join(map(str, values)) or None)))
    stamps = sorted(t for t in frame["timestamp"] if isinstance(t, str) and t)
    if stamps:
        span = stamps[0] if stamps[0] == stamps[-1] else f"{stamps[0]} – {stamps[-1]}"
        rows.append((Cell("measured"), text(span)))
    counts = frame["status"].value_counts()
    rows.append((Cell("cases"), text(", ".join(f"{n} {s}" for s, n in counts.items()))))
    return Table("environment", ("", ""), tuple(rows))
