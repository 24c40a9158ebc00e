"""FSDP communication and memory: what skipping the gradient reduce-scatter costs and saves.

Reads the `distributed` block of records from `accumbench run --parallel fsdp` (and of
`accumbench estimate --parallel fsdp`, which predicts counts and memory but no times).
Accumulation runs each case twice: reduce-scattering the gradients after every micro-step, and
only after the last one (`set_requires_gradient_sync(False)` on the others, which keeps the
unsharded gradients alive). Unlike DDP, memory differs between the two, so the figure shows the
peak beside the reduce-scatter count and the throughput.

Same conventions as `communication`: prepared frame in, `Figure` (or None) out.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from accumbench.report.bars import sync_pairs_figure
from accumbench.report.data import FSDP_NO_SYNC_TEXT, FSDP_SYNC_TEXT, ddp_sync_text, in_display_order, scenario_name
from accumbench.report.findings import ratio_text, row_ratio
from accumbench.report.tables import Table, number, text
from accumbench.report.units import format_bytes, format_rate, format_seconds, is_missing

SYNC_ORDER = (FSDP_SYNC_TEXT, FSDP_NO_SYNC_TEXT)
SYNC_COLORS = {FSDP_SYNC_TEXT: "#ff7f0e", FSDP_NO_SYNC_TEXT: "#1f77b4"}
PANELS = (
    ("reducescatters_per_step_", "gradient reduce-scatters per optimizer step (one rank)"),
    ("peak_mib_", "peak allocated (MiB, max over ranks)"),
    ("samples_per_s_", "throughput (samples/s, all ranks)"),
)


def is_fsdp(block: Any) -> bool:
    """True for the `distributed` block of an FSDP record."""
    return isinstance(block, dict) and block.get("parallel") == "fsdp"


def fsdp_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The FSDP records, with the block's numbers as columns: `sync_`, `units_`,
    `allgathers_per_step_`, `reducescatters_per_step_`, their bytes and seconds per step,
    `per_rank_peaks_`, `backend_`."""
    data = frame[frame["distributed"].map(is_fsdp)]
    blocks = data["distributed"]

    def numbers(name: str) -> pd.Series:
        return pd.to_numeric(pd.Series([b.get(name) for b in blocks], index=data.index, dtype=object),
                             errors="coerce")

    return data.assign(
        sync_=[ddp_sync_text(b) for b in blocks],
        units_=numbers("fsdp_units"),
        allgathers_per_step_=numbers("allgathers_per_step"),
        allgather_bytes_per_step_=numbers("allgather_bytes_per_step"),
        allgather_s_per_step_=numbers("allgather_time_s_per_step"),
        reducescatters_per_step_=numbers("reducescatters_per_step"),
        reducescatter_bytes_per_step_=numbers("reducescatter_bytes_per_step"),
        reducescatter_s_per_step_=numbers("reducescatter_time_s_per_step"),
        per_rank_peaks_=[tuple(b.get("per_rank_peak_allocated") or ()) for b in blocks],
        backend_=[b.get("backend") for b in blocks],
        peak_mib_=pd.to_numeric(data["peak_allocated"], errors="coerce") / 2**20,
    )


def _category(row: Any) -> str:
    label = f"{row.workload}\n{row.micro_batch}×{row.accum_steps} per rank, {row.world_size} ranks"
    return label + (f"\n{row.variant}" if row.variant else "")


def fsdp_figure(frame: pd.DataFrame) -> Figure | None:
    """Reduce-scatter every micro-step vs once per step, per accumulated FSDP configuration:
    reduce-scatters per step, peak memory, throughput (None without FSDP records)."""
    return sync_pairs_figure(fsdp_rows(frame), _category, PANELS, SYNC_ORDER, SYNC_COLORS)


def fsdp_table(frame: pd.DataFrame) -> Table:
    """Every FSDP record: synchronisation, units, all-gathers and reduce-scatters per step with
    their bytes and time, throughput of all ranks, peak (max over ranks) and each rank's."""
    data = fsdp_rows(frame)
    rows = []
    for r in in_display_order(data).itertuples():
        ok = r.status == "ok"
        peaks = " / ".join(format_bytes(p) for p in r.per_rank_peaks_) if r.per_rank_peaks_ else "—"
        rows.append((
            text(r.workload), text(scenario_name(r.scenario)), text(f"{r.micro_batch} × {r.accum_steps}"),
            number(r.world_size), text(r.sync_ if r.scenario != "large-batch" else "—"), text(r.status),
            number(r.units_ if ok else None, lambda v: f"{v:g}"),
            number(r.allgathers_per_step_ if ok else None, lambda v: f"{v:g}"),
            number(r.allgather_bytes_per_step_ if ok else None, format_bytes),
            number(r.allgather_s_per_step_ if ok else None, format_seconds),
            number(r.reducescatters_per_step_ if ok else None, lambda v: f"{v:g}"),
            number(r.reducescatter_bytes_per_step_ if ok else None, format_bytes),
            number(r.reducescatter_s_per_step_ if ok else None, format_seconds),
            number(r.samples_per_s_, lambda v: format_rate(v, "")),
            number(r.peak_allocated if ok else None, format_bytes), text(peaks if ok else None),
        ))
    return Table("fsdp_communication", (
        "workload", "scenario", "micro-batch × steps (per rank)", "ranks", "synchronisation", "status",
        "FSDP units", "all-gathers per step", "all-gather bytes per step", "all-gather time per step",
        "reduce-scatters per step", "reduce-scatter bytes per step", "reduce-scatter time per step",
        "samples/s (all ranks)", "peak allocated (max over ranks)", "peak per rank"), tuple(rows))


def fsdp_findings(frame: pd.DataFrame) -> list[str]:
    """One sentence per accumulated FSDP configuration measured both ways: reduce-scatter
    counts, the memory that skipping sync costs, and the throughput change."""
    data = fsdp_rows(frame)
    data = data[(data["scenario"] == "accumulated") & (data["status"] == "ok")]
    out = []
    for key, group in data.groupby(["workload", "variant", "micro_batch", "accum_steps", "world_size", "meter"],
                                   sort=False):
        both = {r.sync_: r for r in group.itertuples()}
        if set(both) != set(SYNC_ORDER):
            continue
        synced, skipped = both[FSDP_SYNC_TEXT], both[FSDP_NO_SYNC_TEXT]
        workload, variant, micro, steps, ranks, meter = key
        name = f"{workload} ({variant})" if variant else workload
        extra = skipped.peak_allocated - synced.peak_allocated
        sentence = (f"{name}, {micro} × {steps} per rank on {ranks} ranks ({meter}): skipping the gradient "
                    f"sync until the last micro-step makes {skipped.reducescatters_per_step_:g} reduce-scatters "
                    f"per optimizer step instead of {synced.reducescatters_per_step_:g}, and costs "
                    f"{format_bytes(extra, signed=True)} of peak memory "
                    f"(the unsharded gradients kept between micro-steps)")
        a, b = synced.samples_per_s_, skipped.samples_per_s_
        if not (is_missing(a) or is_missing(b)) and a:
            sentence += f"; its samples/s: {ratio_text(row_ratio(skipped, synced), 'of syncing every micro-step')}"
        out.append(sentence + ".")
    return out


__all__ = ["fsdp_figure", "fsdp_findings", "fsdp_rows", "fsdp_table", "is_fsdp"]
