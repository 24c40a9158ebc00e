"""Levers beside accumulation: memory and throughput with and without each (accumbench.levers).

A lever record (activation checkpointing, frozen parameters or LoRA, torch.compile) is compared
with its eager twin: the record of the same workload, scenario, micro-batch x steps and knobs
without levers. One figure per section: for each configuration measured with a lever, horizontal
bars of peak memory (left) and samples/s (right), one bar per lever setting, eager on top.

Same conventions as `bars`: prepared frame in, `Figure` (or None when no record has a lever) out.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from accumbench.report.data import lever_label, scenario_name
from accumbench.report.layout import PANEL_SIZE, finish_axes, grid
from accumbench.report.findings import ratio_text, row_ratio
from accumbench.report.tables import Cell, Table, number, text
from accumbench.report.units import MISSING, format_bytes, format_rate, format_seconds, is_missing, memory_unit

EAGER = "eager"
TWIN_KEYS = ("section", "workload", "scenario", "micro_batch", "accum_steps", "amp", "set_to_none", "loss_norm")


def lever_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Records of the configurations measured with at least one lever, with their eager twins:
    columns `lever_` (label) and `config_` (workload, scenario, micro-batch x steps)."""
    if frame.empty:
        return frame
    labelled = frame.assign(lever_=[lever_label(r) for r in frame.itertuples()])
    keys = [k for k in TWIN_KEYS if k in labelled.columns]
    levered = labelled[labelled["lever_"] != EAGER]
    wanted = set(zip(*(levered[k] for k in keys))) if not levered.empty else set()
    rows = labelled[[key in wanted for key in zip(*(labelled[k] for k in keys))]]
    return rows.assign(config_=[f"{r.workload} {scenario_name(r.scenario)} {r.micro_batch}×{r.accum_steps}"
                                for r in rows.itertuples()])


def levers_figure(frame: pd.DataFrame) -> Figure | None:
    """Peak memory and samples/s per lever setting, per configuration measured with a lever; bars
    only for cases that ran (an OOM or error has no bar; the table says why), the throughput
    panel only when some case has a measured one (estimates have none); None when nothing ran."""
    data = lever_rows(frame)
    if data.empty:
        return None
    data = data.assign(**{column: pd.to_numeric(data[column], errors="coerce").where(data["status"] == "ok")
                          for column in ("peak_allocated", "samples_per_s_")})
    if data["peak_allocated"].isna().all():
        return None
    configs = list(dict.fromkeys(data["config_"]))
    # Eager on top when the section holds a twin; a legend entry without bars says nothing.
    labels = [EAGER] * (EAGER in set(data["lever_"])) + sorted(set(data["lever_"]) - {EAGER})
    panels = [("peak_allocated", "peak memory")]
    if data["samples_per_s_"].notna().any():
        panels.append(("samples_per_s_", "throughput (samples/s)"))
    fig, axes = grid(len(panels), (PANEL_SIZE[0], max(3.0, 0.9 + 0.35 * len(configs) * len(labels))))
    height = 0.8 / len(labels)
    unit_name, unit_bytes = memory_unit(float(data["peak_allocated"].max()))
    for ax, (column, title) in zip(axes, panels):
        unit = unit_bytes if column == "peak_allocated" else 1.0
        title = f"{title} ({unit_name})" if column == "peak_allocated" else title
        for j, label in enumerate(labels):
            rows = data[data["lever_"] == label]
            values = dict(zip(rows["config_"], rows[column])) if column in rows else {}
            widths = [values.get(c, math.nan) for c in configs]
            ys = [i - 0.4 + height * (j + 0.5) for i in range(len(configs))]
            ax.barh(ys, [0.0 if is_missing(w) else w / unit for w in widths], height=height, label=label)
        ax.set_yticks(range(len(configs)), configs, fontsize=8)
        ax.set_ylim(len(configs) - 0.5, -0.5)
        ax.set_xlabel(title)
        finish_axes(ax, title)
    return fig


def levers_table(frame: pd.DataFrame) -> Table:
    """Every lever record beside its eager twin: peak and throughput, their changes, compile time."""
    data = lever_rows(frame)
    rows = []
    if not data.empty:
        eager = {r.config_: r for r in data.itertuples() if r.lever_ == EAGER}
        for r in data.itertuples():
            if r.lever_ == EAGER:
                continue
            twin = eager.get(r.config_)
            peak_change = (r.peak_allocated - twin.peak_allocated
                           if twin is not None and not is_missing(r.peak_allocated) and not is_missing(twin.peak_allocated)
                           else None)
            speed = getattr(r, "samples_per_s_", None)
            base_speed = getattr(twin, "samples_per_s_", None) if twin is not None else None
            # The throughput ratio with its interval, never a bare change (as every ratio the report states).
            ratio = row_ratio(r, twin) if not is_missing(speed) and not is_missing(base_speed) and base_speed else None
            compile_s = getattr(r, "compile_time_s", None)
            rows.append((
                text(r.config_), text(r.lever_), text(r.status),
                number(None if twin is None else twin.peak_allocated, format_bytes),
                number(r.peak_allocated, format_bytes), number(peak_change, lambda v: format_bytes(v, signed=True)),
                number(base_speed, lambda v: format_rate(v, "")), number(speed, lambda v: format_rate(v, "")),
                Cell(ratio_text(ratio) if ratio is not None else MISSING, ratio.value if ratio is not None and ratio.differs
                     else None),
                number(None if is_missing(compile_s) else compile_s, format_seconds),
            ))
    return Table("levers", ("configuration", "lever", "status", "eager peak", "peak", "peak change",
                            "eager samples/s", "samples/s", "throughput, lever / eager (95% CI)", "compile time"), tuple(rows))


def levers_findings(frame: pd.DataFrame) -> list[str]:
    """One sentence per lever record with an eager twin: what the lever saves and costs."""
    table = levers_table(frame)
    found = []
    for row in table.rows:
        config, lever, status = (cell.text for cell in row[:3])
        if status != "ok" or row[5].value is None:
            continue
        sentence = f"{lever} on {config}: peak {row[5].text}"
        if row[8].text != MISSING:
            sentence += f", throughput: {row[8].text}" + (" of eager" if row[8].value is not None else "")
        if row[9].value is not None:
            sentence += f" (compiling took {row[9].text}, not in the step times)"
        found.append(sentence + ".")
    return found


__all__ = ["lever_label", "lever_rows", "levers_figure", "levers_findings", "levers_table"]
