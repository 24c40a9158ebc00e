"""DDP communication: what `no_sync()` saves when accumulating under DistributedDataParallel.

Reads the `distributed` block of records from `accumbench run --nproc-per-node N` (or
`--distributed` under torchrun). Accumulation runs each case twice, all-reducing the gradients
after every micro-step and only after the last one (`no_sync()` on the others); the figure puts
the two side by side per configuration: gradient all-reduces per optimizer step, time spent in
them, and throughput. Memory is not on it: DDP's gradient buckets exist either way, and the
memory figures above show both lines.

Same conventions as `bars`: prepared frame in, `Figure` (or None when no record is distributed)
out; each bar series is a labelled `BarContainer` in `ax.containers`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from accumbench.report.data import DDP_NO_SYNC_TEXT, DDP_SYNC_TEXT, ddp_sync_text, in_display_order, scenario_name
from accumbench.report.findings import ratio_text, row_ratio
from accumbench.report.bars import sync_pairs_figure
from accumbench.report.tables import Table, number, text
from accumbench.report.units import format_bytes, format_rate, format_seconds, is_missing

SYNC_ORDER = (DDP_SYNC_TEXT, DDP_NO_SYNC_TEXT)
SYNC_COLORS = {DDP_SYNC_TEXT: "#ff7f0e", DDP_NO_SYNC_TEXT: "#1f77b4"}

# (column, axis label) of the figure's three panels per section.
PANELS = (
    ("allreduces_per_step_", "gradient all-reduces per optimizer step"),
    ("allreduce_ms_per_step_", "time in all-reduces per optimizer step (ms, slowest rank)"),
    ("samples_per_s_", "throughput (samples/s, all ranks)"),
)


def distributed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The records of DDP runs, with the `distributed` block's numbers as columns: `sync_`
    (how micro-steps synchronised), `buckets_`, `allreduces_per_step_`,
    `allreduce_s_per_step_` (and `_ms_`), `per_rank_peaks_` (a tuple), `backend_`."""
    is_ddp = frame["distributed"].map(lambda d: isinstance(d, dict) and "no_sync" in d
                                      and d.get("parallel", "ddp") == "ddp")  # FSDP: report/fsdp.py
    data = frame[is_ddp]
    blocks = data["distributed"]

    def field(name: str) -> list[Any]:
        return [block.get(name) for block in blocks]

    seconds = pd.to_numeric(pd.Series(field("allreduce_time_s_per_step"), index=data.index,
                                      dtype=object), errors="coerce")
    return data.assign(
        sync_=[ddp_sync_text(b) for b in blocks],
        buckets_=field("buckets"),
        allreduces_per_step_=pd.to_numeric(pd.Series(field("allreduces_per_step"), index=data.index,
                                                     dtype=object), errors="coerce"),
        allreduce_s_per_step_=seconds,
        allreduce_ms_per_step_=seconds * 1000.0,
        per_rank_peaks_=[tuple(p) if isinstance(p, (list, tuple)) else () for p in field("per_rank_peak_allocated")],
        backend_=field("backend"),
    )


def _category(row: Any) -> str:
    label = f"{row.workload}\n{row.micro_batch}×{row.accum_steps} per rank"
    return label + (f"\n{row.variant}" if row.variant else "")


def communication_figure(frame: pd.DataFrame) -> Figure | None:
    """All-reduce every micro-step vs `no_sync()`, per accumulated DDP configuration.

    One row of three panels per section (all-reduces per step, their time, throughput), one pair
    of horizontal bars per workload and micro-batch × steps. A case that did not run has no bar
    and its status written instead; the `no_sync()` bar is annotated with its change.
    """
    return sync_pairs_figure(distributed_rows(frame), _category, PANELS, SYNC_ORDER, SYNC_COLORS)


def communication_table(frame: pd.DataFrame) -> Table:
    """Every DDP record: how it synchronised, buckets, all-reduces and their time per optimizer
    step, throughput of all ranks, and each rank's peak."""
    data = distributed_rows(frame)
    rows = []
    for r in in_display_order(data).itertuples():
        peaks = " / ".join(format_bytes(p) for p in r.per_rank_peaks_) if r.per_rank_peaks_ else "—"
        ok = r.status == "ok"
        rows.append((
            text(r.workload), text(scenario_name(r.scenario)), text(f"{r.micro_batch} × {r.accum_steps}"),
            number(r.effective_batch), text(r.sync_ if r.scenario != "large-batch" else "—"),
            text(r.status), number(r.buckets_ if ok else None),
            number(r.allreduces_per_step_ if ok else None, lambda v: f"{v:g}"),
            number(r.allreduce_s_per_step_ if ok else None, format_seconds),
            number(r.samples_per_s_, lambda v: format_rate(v, "")),
            number(r.peak_allocated if ok else None, format_bytes), text(peaks if ok else None),
        ))
    return Table("communication", (
        "workload", "scenario", "micro-batch × steps (per rank)", "effective batch (global)",
        "synchronisation", "status", "buckets", "all-reduces per step", "all-reduce time per step",
        "samples/s (all ranks)", "peak allocated (max over ranks)", "peak per rank"), tuple(rows))


def _allreduces(count: float) -> str:
    return f"{count:g} gradient all-reduce{'' if count == 1 else 's'}"


def communication_findings(frame: pd.DataFrame) -> list[str]:
    """One sentence per accumulated DDP configuration measured both ways: all-reduce counts and
    `no_sync()`'s samples/s relative to all-reducing every micro-step, with its 95% interval
    ("no measurable difference" when the interval holds 1)."""
    data = distributed_rows(frame)
    data = data[(data["scenario"] == "accumulated") & (data["status"] == "ok")]
    out = []
    keys = ["workload", "variant", "micro_batch", "accum_steps"]
    for key, group in data.groupby(keys, sort=False):
        both = {r.sync_: r for r in group.itertuples()}
        if set(both) != set(SYNC_ORDER):
            continue
        synced, unsynced = both[DDP_SYNC_TEXT], both[DDP_NO_SYNC_TEXT]
        workload, variant, micro, steps = key
        name = f"{workload} ({variant})" if variant else workload
        sentence = (f"{name}, {micro} × {steps} per rank: no_sync() makes "
                    f"{_allreduces(unsynced.allreduces_per_step_)} per optimizer step instead of "
                    f"{synced.allreduces_per_step_:g}")
        a, b = synced.samples_per_s_, unsynced.samples_per_s_
        if not (is_missing(a) or is_missing(b)) and a:
            # Both runs' slowest-rank step times, bootstrapped: an interval holding 1 is noise.
            sentence += f"; its samples/s: {ratio_text(row_ratio(unsynced, synced), 'of all-reducing every micro-step')}"
        out.append(sentence + ".")
    return out


__all__ = ["communication_figure", "communication_findings", "communication_table", "distributed_rows"]
