"""From result files to the one DataFrame every figure and table of the report reads.

Two jobs: refuse input that cannot make a report, with a message a person can act on; and add
the columns the report needs but records do not store (sections, line labels, throughput with
its spread), computed once here so that figures and tables agree.

Sections: records are never merged across devices or files. A section is one results file on
one device, as measured by one meter, at one world size and way of going parallel (DDP or
FSDP: `SECTION_KEYS`); each gets its own part
of the page and its own panels in every figure.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from accumbench.fit import fit_memory_line
from accumbench.levers import Levers
from accumbench.records import Record, iter_records, records_to_frame
from accumbench.stats import StepTimes, typical_spread
from accumbench.report.units import is_missing

SECTION_KEYS = ("source", "meter", "device_name", "world_size", "parallel_")

# Columns without which no figure can be drawn. Anything else a record may lack is filled with
# None, so a hand-made frame with only these columns still makes a (smaller) report.
REQUIRED_COLUMNS = (
    "workload", "scenario", "micro_batch", "accum_steps", "effective_batch", "status",
    "peak_allocated",
)

# Knobs that, when they differ between records of one scenario of one workload in one section,
# would put two different measurements on the same point; the report then names them in the
# line labels.
LEVER_KNOBS = ("checkpoint", "freeze", "trainable", "lora", "compile")
VARIANT_KNOBS = ("amp", "set_to_none", "optimizer", "loss_norm", "retain_graph", "workload_options",
                 *LEVER_KNOBS)

SCENARIO_ORDER = ("large-batch", "accumulated", "multitask-combined", "multitask-sequential")
SCENARIO_NAMES = {
    "large-batch": "large batch",
    "accumulated": "accumulated",
    "multitask-combined": "combined loss",
    "multitask-sequential": "sequential backward",
}


class ReportInputError(ValueError):
    """Input from which no report can be made (no files, only empty files, missing columns)."""


def load_frame(paths: Sequence[str | os.PathLike[str]]) -> tuple[pd.DataFrame, list[str]]:
    """Read results files into one frame; return it with notes about files that held nothing.

    Raises `ReportInputError` when no path is given or no file holds a record, and lets
    `accumbench.records.RecordError` (missing, corrupt or foreign file, naming file:line) through.
    """
    if not paths:
        raise ReportInputError("no results files given")
    frames: list[pd.DataFrame] = []
    notes: list[str] = []
    for path in paths:
        records: list[Record] = list(iter_records(path))
        if not records:
            notes.append(f"{path}: no records (empty file); left out of the report")
            continue
        frames.append(records_to_frame(records).assign(source=str(path)))
    if not frames:
        names = ", ".join(str(p) for p in paths)
        raise ReportInputError(f"no records in {names}: nothing to report "
                               "(run `accumbench run --out FILE.jsonl` first)")
    return pd.concat(frames, ignore_index=True), notes


def prepare(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Validate a results frame and add the derived columns the report reads.

    Added columns: `section` (0, 1, ... in order of appearance), `section_title`, `line` (the
    legend label of the line a record belongs to), `line_order`, `variant`, `samples_per_s_` and
    `tokens_per_s_` (measured only: none for the estimate meter's predictions), `tokens_per_sample_`, `step_q25_s`, `step_q75_s`, `step_median_s`, `step_times_` (a
    `StepTimes`), `samples_ci_low_`/`samples_ci_high_` (95% interval of samples/s), `predicted_peak` (for
    cases that ran out of memory: the memory line's value at their micro-batch). Returns the
    new frame and notes (strings) about what was dropped or is missing. Raises
    `ReportInputError` for a frame that has no rows or lacks a required column.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ReportInputError(f"results lack column(s) {', '.join(missing)}: "
                               "not accumbench records?")
    if frame.empty:
        raise ReportInputError("no records: nothing to report")
    frame = _with_defaults(frame)
    notes: list[str] = []

    frame = _assign_sections(frame)
    before = len(frame)
    # A resumed or repeated run can hold the same case twice; the later measurement wins.
    frame = frame.drop_duplicates(subset=["section", "case_id"], keep="last").reset_index(drop=True)
    if len(frame) < before:
        notes.append(f"{before - len(frame)} repeated case(s) measured again in the same file: "
                     "the last measurement of each is shown")

    frame = _assign_lines(frame)
    frame = _add_throughput(frame)
    frame = _add_timing_drift(frame)
    frame = _add_predictions(frame, memory_fits(frame))

    for _, sec in frame.groupby("section", sort=True):
        title = sec["section_title"].iloc[0]
        counts = sec["status"].value_counts()
        if counts.get("ok", 0) == 0:
            notes.append(f"{title}: no case ran successfully ({_count_text(counts)}); "
                         "only failures are shown")
        elif counts.get("error", 0):
            notes.append(f"{title}: {counts['error']} case(s) failed with an error "
                         "(listed under 'Failed cases')")
    return frame, notes


def _add_timing_drift(frame: pd.DataFrame) -> pd.DataFrame:
    """`timing_drift_`: each section's typical spread (median IQR/median of its timed cases),
    the allowance every throughput ratio of that section is widened by (`stats.throughput_ratio`:
    its bootstrap cannot see the machine drift between two cases measured at different times)."""
    drift = pd.Series(0.0, index=frame.index)
    for _, sec in frame.groupby("section", sort=False):
        timed = [t for t, status in zip(sec["step_times_"], sec["status"]) if status == "ok" and len(t)]
        drift[sec.index] = typical_spread(timed) or 0.0
    return frame.assign(timing_drift_=drift)


def _count_text(counts: pd.Series) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _with_defaults(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill the optional record columns a hand-made frame may lack, as `Record` defaults would."""
    frame = frame.copy()
    template = records_to_frame([])
    defaults: dict[str, Any] = {"source": "<results>", "meter": "", "device_name": "",
                                "world_size": 1, "step_times_s": (), "case_id": None,
                                "checkpoint": "none", "compile": False}
    for column in list(template.columns) + ["source"]:
        if column not in frame.columns:
            frame[column] = [defaults.get(column)] * len(frame)
    if frame["case_id"].isna().any():
        # Without a case id, identity is the knobs themselves.
        frame["case_id"] = [
            cid if isinstance(cid, str) else f"{r.workload}/{r.scenario}/{r.micro_batch}x{r.accum_steps}"
            for cid, r in zip(frame["case_id"], frame.itertuples())
        ]
    for column in ("source", "meter", "device_name"):
        frame[column] = frame[column].fillna("").astype(str)
    frame["world_size"] = frame["world_size"].fillna(1).astype(int)
    # DDP and FSDP records of one file are other steps, never lines of one figure.
    frame["parallel_"] = [d.get("parallel", "ddp") if isinstance(d, dict) else "" for d in frame["distributed"]]
    for column in ("micro_batch", "accum_steps", "effective_batch"):
        frame[column] = frame[column].astype(int)
    frame["step_times_s"] = [tuple(t) if isinstance(t, (list, tuple)) else ()
                             for t in frame["step_times_s"]]
    return frame


def _assign_sections(frame: pd.DataFrame) -> pd.DataFrame:
    keys = list(dict.fromkeys(zip(*(frame[k] for k in SECTION_KEYS))))
    index = {key: i for i, key in enumerate(keys)}
    several_sources = len({key[0] for key in keys}) > 1
    titles = [_section_title(key, several_sources) for key in keys]
    section = [index[key] for key in zip(*(frame[k] for k in SECTION_KEYS))]
    return frame.assign(section=section, section_title=[titles[s] for s in section])


def _section_title(key: tuple, several_sources: bool) -> str:
    source, meter, device, world_size, parallel = key
    title = device or "unknown device"
    if meter:
        title += f" · {meter} meter"
    if world_size > 1:
        title += f" · {world_size} processes"
    if parallel:
        title += f" · {parallel.upper()}"
    if several_sources:
        title += f" · {Path(source).name}"
    return title


def in_display_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by section, workload (in order of first appearance), line, effective batch: the
    order of the panels, legends and tables."""
    workloads = {w: i for i, w in enumerate(dict.fromkeys(frame["workload"]))}
    keyed = frame.assign(_workload=frame["workload"].map(workloads))
    return keyed.sort_values(["section", "_workload", "line_order", "effective_batch"],
                             kind="stable").drop(columns="_workload")


def scenario_name(scenario: str) -> str:
    """The legend name of a scenario (`'large-batch'` -> `'large batch'`); unknown ones as is."""
    return SCENARIO_NAMES.get(scenario, scenario)


def scenario_rank(scenario: str) -> int:
    """Sort position of a scenario: the known ones in `SCENARIO_ORDER`, unknown ones after."""
    return SCENARIO_ORDER.index(scenario) if scenario in SCENARIO_ORDER else len(SCENARIO_ORDER)


def lever_label(row: Any) -> str:
    """The levers of a record as a short label (`eager` when none)."""
    def value(name: str, default: Any) -> Any:
        # A frame row (Series) or an itertuples row.
        v = row.get(name, default) if hasattr(row, "get") else getattr(row, name, default)
        return default if is_missing(v) else v

    try:
        levers = Levers(checkpoint=value("checkpoint", "none"), freeze=value("freeze", None),
                        trainable=value("trainable", None), lora=value("lora", None),
                        compile=bool(value("compile", False)))
    except ValueError:
        return "?"
    return levers.describe()


def _knob_text(value: Any) -> str:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "{}"
    return str(value)


def _assign_lines(frame: pd.DataFrame) -> pd.DataFrame:
    """Label each record with the line it is drawn on.

    Large batch is one line over effective batch. An accumulating scenario is one line per
    micro-batch (the accumulation steps move it along the x axis), unless it never accumulates
    (all `accum_steps == 1`), in which case it is one line like the large batch.
    """
    variant = [""] * len(frame)
    # Per scenario: a knob a scenario fixes (sequential backward on a shared trunk needs
    # retain_graph=True) differs between scenarios without making two variants of either.
    for _, group in frame.groupby(["section", "workload", "scenario"], sort=False):
        varying = [k for k in VARIANT_KNOBS if group[k].map(_knob_text).nunique() > 1]
        # Levers are named together, and only those that are on ("ckpt-blocks", "eager").
        levers_vary = any(k in LEVER_KNOBS for k in varying)
        for i in group.index:
            parts = [f"{k}={_knob_text(frame.at[i, k])}" for k in varying if k not in LEVER_KNOBS]
            variant[i] = ", ".join(parts + ([lever_label(frame.loc[i])] if levers_vary else []))
    frame = frame.assign(variant=variant)

    lines, orders = [], []
    per_line = frame.groupby(["section", "workload", "variant", "scenario"], sort=False)
    single = {key: bool((g["accum_steps"] == 1).all()) for key, g in per_line}
    for row in frame.itertuples():
        key = (row.section, row.workload, row.variant, row.scenario)
        label = scenario_name(row.scenario)
        by_micro = row.scenario != "large-batch" and not single[key]
        if by_micro:
            label += f", micro-batch {row.micro_batch}"
        # Under DDP, accumulation runs with and without no_sync(): the same memory, different
        # communication, so two lines (not a variant: both compare with the one large batch).
        sync = ddp_sync_text(row.distributed) if row.scenario != "large-batch" else ""
        if sync:
            label += f", {sync}"
        if row.variant:
            label += f" ({row.variant})"
        lines.append(label)
        orders.append((scenario_rank(row.scenario), row.variant,
                       row.micro_batch if by_micro else 0, sync))
    return frame.assign(line=lines, line_order=orders)


DDP_NO_SYNC_TEXT = "no_sync()"
DDP_SYNC_TEXT = "all-reduce every micro-step"
FSDP_NO_SYNC_TEXT = "reduce-scatter once per step"
FSDP_SYNC_TEXT = "reduce-scatter every micro-step"


def ddp_sync_text(distributed: Any) -> str:
    """How a DDP record synchronised its micro-steps: `'no_sync()'` (one all-reduce per
    optimizer step) or `'all-reduce every micro-step'`; `''` for a single-process record."""
    if not isinstance(distributed, dict) or "no_sync" not in distributed:
        return ""
    if distributed.get("parallel") == "fsdp":
        return FSDP_NO_SYNC_TEXT if distributed["no_sync"] else FSDP_SYNC_TEXT
    return DDP_NO_SYNC_TEXT if distributed["no_sync"] else DDP_SYNC_TEXT


def _add_throughput(frame: pd.DataFrame) -> pd.DataFrame:
    """Samples/s (recorded, or effective batch over median step time) and step-time quartiles.

    Each step time is one optimizer step, which processes `effective_batch` samples; the spread
    of samples/s is drawn from the step-time quartiles (a slow step is a low rate).
    """
    summaries = [StepTimes(t) for t in frame["step_times_s"]]
    quarts = [s.quartiles for s in summaries]
    cis = [s.median_ci() or (math.nan, math.nan) for s in summaries]
    q25 = [q[0] for q in quarts]
    median = [q[1] for q in quarts]
    q75 = [q[2] for q in quarts]
    recorded = pd.to_numeric(frame["samples_per_s"], errors="coerce")
    # A zero median (a fake clock, a too-coarse timer) would be an infinite rate: unknown instead.
    medians = pd.Series(median, index=frame.index).where(lambda m: m > 0)
    derived = frame["effective_batch"] / medians
    samples = recorded.where(recorded.notna(), derived)
    tokens = pd.to_numeric(frame["tokens_per_s"], errors="coerce")
    # The estimate meter's samples/s are predictions: drawn only against the measured
    # (report.predicted), never as throughput.
    ok = (frame["status"] == "ok") & (frame["meter"] != "estimate")
    return frame.assign(
        samples_per_s_=samples.where(ok),
        tokens_per_s_=tokens.where(ok),
        tokens_per_sample_=(tokens / samples).where(ok),
        step_q25_s=q25,
        step_median_s=median,
        step_q75_s=q75,
        step_times_=summaries,
        # The rate's 95% interval from the median's: a slow median is a low rate.
        samples_ci_low_=(frame["effective_batch"] / pd.Series([c[1] for c in cis], index=frame.index)
                         * (samples / derived)).where(ok),
        samples_ci_high_=(frame["effective_batch"] / pd.Series([c[0] for c in cis], index=frame.index)
                          * (samples / derived)).where(ok),
    )


FIT_GROUP = ["section", "workload", "variant", "scenario"]


def memory_fits(frame: pd.DataFrame) -> pd.DataFrame:
    """Peak memory vs micro-batch, fitted per section, workload, variant and scenario.

    Uses the successful records of a prepared frame (see `prepare`); a group needs two distinct
    micro-batch sizes. One row per fitted group: the `FIT_GROUP` columns, `section_title`,
    `points`, `min_micro_batch`, `max_micro_batch`, `bytes_per_sample`, `intercept_bytes`, `r2`.
    """
    rows = []
    ok = frame[(frame["status"] == "ok") & frame["peak_allocated"].notna()]
    for key, group in ok.groupby(FIT_GROUP, sort=False):
        if group["micro_batch"].nunique() < 2:
            continue
        fit = fit_memory_line(group["micro_batch"].tolist(), group["peak_allocated"].tolist())
        rows.append({
            **dict(zip(FIT_GROUP, key)),
            "section_title": group["section_title"].iloc[0],
            "points": len(group),
            "min_micro_batch": int(group["micro_batch"].min()),
            "max_micro_batch": int(group["micro_batch"].max()),
            "bytes_per_sample": fit.bytes_per_sample,
            "intercept_bytes": fit.intercept_bytes,
            "r2": fit.r2,
        })
    columns = FIT_GROUP + ["section_title", "points", "min_micro_batch", "max_micro_batch",
                           "bytes_per_sample", "intercept_bytes", "r2"]
    return pd.DataFrame(rows, columns=columns)


def _add_predictions(frame: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """For out-of-memory records, the fitted peak at their micro-batch.

    This is where an out-of-memory case would have been had the device been large enough; the
    memory figure draws its mark there.
    """
    lines = {tuple(row[k] for k in FIT_GROUP): row for row in fits.to_dict("records")}
    predicted = []
    for row in frame.to_dict("records"):
        fit = lines.get(tuple(row[k] for k in FIT_GROUP))
        if row["status"] != "oom" or fit is None:
            predicted.append(math.nan)
        else:
            predicted.append(fit["intercept_bytes"] + fit["bytes_per_sample"] * row["micro_batch"])
    return frame.assign(predicted_peak=predicted)
