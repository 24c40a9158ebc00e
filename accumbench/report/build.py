"""Assemble the report: per section, each figure with its tables and findings; then write it.

The figure kinds are a literal registry (`FIGURES`): what each is called, what it shows, how it
is built and which tables go under it. `build_report` runs them per section and hands the result
to `html.render_page` and `markdown.render_summary`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from accumbench.report import bars, communication, figures, findings, fsdp, levers, output, predicted, tables, timelines
from accumbench.report.data import ReportInputError, load_frame, memory_fits, prepare
from accumbench.report.html import render_page
from accumbench.report.layout import add_footer, provenance_text, save
from accumbench.report.markdown import render_summary
from accumbench.report.sections import FigureBlock, FigureKind, SectionReport


def _no_findings(frame: pd.DataFrame, fits: pd.DataFrame) -> list[str]:
    return []


FIGURES: tuple[FigureKind, ...] = (
    FigureKind(
        "memory_vs_effective_batch", "Peak memory vs effective batch",
        "Peak allocated memory of one optimizer step (steady state, after warm-up) against the "
        "effective batch, on a log2 axis. The large batch holds every sample's activations at "
        "once, so it climbs with the batch; accumulation holds one micro-batch's activations plus "
        "the gradients, so each micro-batch's line stays flat however many steps it accumulates "
        "(it starts from the large batch at its micro-batch: one step is no accumulation). "
        "Workloads measured at a single effective batch are in the table only. "
        "Each line has its own colour and marker and is named at its end; a panel whose values "
        "span more than 16× has a log y axis, so that lines near zero stay apart. "
        "A red × is a case that ran out of memory, drawn where the memory-vs-micro-batch line "
        "predicts its peak (dotted from the last case that fitted, labelled \"predicted\": that "
        "peak was never measured), or on the device-memory line when there is no line to "
        "extrapolate; the dashed line is the device's total memory (named "
        "in the panel's corner instead when the peaks stay below a quarter of it).",
        lambda f, fits: figures.memory_vs_effective_batch(f),
        lambda f, fits: (tables.memory_table(f),),
        lambda f, fits: findings.memory_findings(f),
        "no workload was measured (run or out of memory) at two or more effective batches",
    ),
    FigureKind(
        "throughput_vs_effective_batch", "Throughput vs effective batch",
        "Samples per second of the optimizer step at the median step time; the bars span the "
        "step-time quartiles, the table gives the rate's 95% interval (rank-based, from the "
        "median's), and the findings compare rates as ratios with bootstrap 95% intervals: an "
        "interval that holds 1 is \"no measurable difference\", and a comparison whose medians are "
        "known to worse than ±5% is \"too noisy to say\" (or, when its interval excludes 1 even so, "
        "given as a range \"imprecisely\"). Small micro-batches under-use the device, so accumulating "
        "many small steps costs throughput; a micro-batch large enough to fill the device runs close "
        "to the large batch.",
        lambda f, fits: figures.throughput_vs_effective_batch(f, "samples"),
        lambda f, fits: (tables.throughput_table(f),),
        lambda f, fits: findings.throughput_findings(f),
        "no workload has step times at two or more effective batches",
    ),
    FigureKind(
        "tokens_vs_effective_batch", "Tokens per second vs effective batch",
        "The same throughput counted in tokens, for workloads whose samples are token sequences.",
        lambda f, fits: figures.throughput_vs_effective_batch(f, "tokens"),
        lambda f, fits: (),
        _no_findings,
        "no workload counts tokens",
        optional=True,
    ),
    FigureKind(
        "predicted_vs_measured_throughput", "Predicted vs measured throughput",
        "The estimate meter's predicted samples/s (the step-time model, no GPU) against the measured, "
        "for the cases the files hold both of; the band is +-25%. Predictions appear nowhere else.",
        lambda f, fits: predicted.predicted_vs_measured(f),
        lambda f, fits: (predicted.predicted_table(f),),
        lambda f, fits: predicted.predicted_findings(f),
        "no case has both a predicted and a measured throughput",
        optional=True,
        across_sections=True,
    ),
    FigureKind(
        "memory_vs_micro_batch", "Peak memory vs micro-batch, with the fitted line",
        "Each scenario's peaks against the micro-batch, with the least-squares line through them: "
        "the slope is what one more sample costs, the intercept what the step holds whatever the "
        "batch (parameters, gradients, optimizer state). `accumbench plan` extrapolates these "
        "lines to pick a micro-batch that fits a memory budget.",
        lambda f, fits: figures.memory_vs_micro_batch(f, fits),
        lambda f, fits: (tables.fit_table(fits),),
        lambda f, fits: findings.fit_findings(fits),
        "no scenario ran at two or more micro-batch sizes",
    ),
    FigureKind(
        "multitask_comparison", "Multi-task: combined loss vs sequential backward",
        "For each multi-task layout, the peak memory (left) and throughput (right) of summing the "
        "task losses into one backward versus one backward per task. With separate models the "
        "sequential backward frees each task's graph before the next; with a shared trunk it must "
        "retain the trunk's graph, saves nothing and runs the trunk's backward twice.",
        lambda f, fits: bars.multitask_comparison(f),
        lambda f, fits: (tables.multitask_table(f),),
        lambda f, fits: findings.multitask_findings(f),
        "no multi-task records",
        optional=True,
    ),
    FigureKind(
        "ddp_communication", "DDP: all-reduce every micro-step vs no_sync()",
        "Accumulation under DistributedDataParallel (`accumbench run --nproc-per-node N`), each "
        "configuration run twice: all-reducing the gradients after every micro-step, and with "
        "no_sync() on all but the last micro-step. Left: gradient all-reduces per optimizer step "
        "(DDP all-reduces one bucket of gradients at a time: buckets × accumulation steps without "
        "no_sync(), buckets with it). Middle: time from each bucket's gradients being ready to its "
        "all-reduce finishing, summed per step (it overlaps the backward, so it is time in "
        "communication, not time added to the step). Right: samples/s of all ranks (the job, at its "
        "slowest rank's pace). Memory "
        "is the same either way (DDP's buckets exist in both); the memory figures show both "
        "lines. Micro-batches are per rank; the effective batch counts every rank's samples.",
        lambda f, fits: communication.communication_figure(f),
        lambda f, fits: (communication.communication_table(f),),
        lambda f, fits: communication.communication_findings(f),
        "no DDP records (run with --nproc-per-node)",
        optional=True,
    ),
    FigureKind(
        "fsdp_communication", "FSDP: reduce-scatter every micro-step vs once per step",
        "Accumulation under FSDP2 (`accumbench run --parallel fsdp --nproc-per-node N`), each "
        "configuration run twice: reduce-scattering the gradients after every micro-step, and with "
        "set_requires_gradient_sync(False) on all but the last. Left: gradient reduce-scatters per "
        "optimizer step on one rank (one per FSDP unit and synchronised micro-step). Middle: the "
        "peak (max over ranks): skipping the sync keeps the unsharded gradients between "
        "micro-steps. Right: samples/s of all ranks (the job, at its slowest rank's pace). Micro-batches "
        "are per rank. Only what "
        "was run is shown: multi-GPU numbers come from multi-GPU runs, not from this CPU.",
        lambda f, fits: fsdp.fsdp_figure(f),
        lambda f, fits: (fsdp.fsdp_table(f),),
        lambda f, fits: fsdp.fsdp_findings(f),
        "no FSDP records (run with --parallel fsdp)",
        optional=True,
    ),
    FigureKind(
        "levers", "Levers beside accumulation: checkpointing, frozen parameters, compile",
        "Each configuration measured with a lever (--checkpoint, --freeze/--trainable/--lora, "
        "--compile) beside the same configuration without levers (eager). Left: peak memory; "
        "right: samples/s at the median step time. Checkpointing trades recomputation for "
        "activation memory; frozen parameters hold no gradients or optimizer state; compile time "
        "is kept out of the step times (the table gives it). On the cpu meter a compiled case's "
        "peak is that of its eager step.",
        lambda f, fits: levers.levers_figure(f),
        lambda f, fits: (levers.levers_table(f),),
        lambda f, fits: levers.levers_findings(f),
        "no records with levers",
        optional=True,
    ),
    FigureKind(
        "memory_breakdown", "Where the peak goes",
        "The peak split into parameters, gradients, optimizer state, activations and the rest, as "
        "the meter attributed it. Accumulation shrinks the activations; the other categories do "
        "not depend on the batch.",
        lambda f, fits: bars.memory_breakdown(f),
        lambda f, fits: (tables.breakdown_table(f),),
        _no_findings,
        "no record carries a memory breakdown",
    ),
    FigureKind(
        "memory_timeline", "Memory through one step",
        "Live memory through one steady-state optimizer step (recorded with `accumbench run "
        "--timeline`), phases shaded: forward (blue), backward (orange), optimizer step (grey), "
        "zero_grad (pink); the red dot is the peak. Large batch vs accumulation at the same "
        "micro-batch: accumulation is a sawtooth, one hump of activations per micro-step, over a "
        "floor that steps up by one copy of the gradients after the first backward and stays until "
        "zero_grad. Combined vs sequential multi-task: one hump holding both tasks' graphs vs one "
        "hump per task. On CUDA the curve samples memory_allocated() after every op, so memory an "
        "op frees before returning is not on it; the table gives the allocator's peak beside it.",
        lambda f, fits: timelines.timeline_figure(f),
        lambda f, fits: (timelines.timeline_table(f),),
        _no_findings,
        "no record carries a memory timeline (run with --timeline)",
        optional=True,
    ),
    FigureKind(
        "gradient_equivalence", "Gradient equivalence",
        "Relative error between the gradients of accumulation and of one large batch (from "
        "`accumbench check`). Plain models agree to float rounding; BatchNorm and a per-micro-batch "
        "token mean over padded sequences do not, and the causes column says why.",
        lambda f, fits: bars.gradient_equivalence(f),
        lambda f, fits: (tables.equivalence_table(f),),
        _no_findings,
        "no record carries equivalence results (run `accumbench check`)",
    ),
)


@dataclass(frozen=True)
class ReportResult:
    """What `build_report` wrote and what it noticed.

    `figures` maps each top-level figure file name (without extension) to its `Figure`, so that
    callers and tests can read the plotted data back.
    """

    out_dir: Path
    files: tuple[Path, ...]
    sections: tuple[SectionReport, ...]
    notes: tuple[str, ...]
    figures: dict[str, Figure]
    records: int


def build_report(results: pd.DataFrame | Sequence[str | os.PathLike[str]],
                 out_dir: str | os.PathLike[str], title: str = "accumbench report") -> ReportResult:
    """Write `index.html`, `summary.md` and the figures (PNG and SVG) into `out_dir`.

    `results` is a frame from `accumbench.records.load_results` or a list of results files.
    Raises `ReportInputError` when there is nothing to report and
    `accumbench.records.RecordError` for a corrupt or foreign file; anything missing short of
    that (a file with only OOMs, no breakdowns) is said in the report and in `notes`.

    The report is built in a staging folder and moved into `out_dir` only when complete: a
    failure leaves `out_dir` as it was. Files an earlier report wrote there that this one does
    not are removed (said in `notes`); other files in the folder are left alone.
    """
    final = Path(out_dir)
    try:
        staging, created = output.stage(final)
    except output.ReportFolderError as exc:
        raise ReportInputError(str(exc)) from None
    try:
        result = _write_report(results, staging, title)
        stale = output.publish(staging, final, _OWN_FILES)
    except BaseException:
        output.discard(staging, created)
        raise
    notes = result.notes + ((f"removed {len(stale)} file(s) of an earlier report in {final} that this "
                             f"report does not write: {', '.join(stale)}",) if stale else ())
    return dataclasses.replace(result, out_dir=final, files=tuple(final / f.name for f in result.files),
                               notes=notes)


# File names a report writes, for folders made before the manifest (see `output.publish`).
_OWN_FILES = (r"index\.html", r"summary\.md",
              *(re.escape(kind.name) + r"(--section-\d+)?\.(png|svg)" for kind in FIGURES))


def _write_report(results: pd.DataFrame | Sequence[str | os.PathLike[str]], out_dir: Path,
                  title: str) -> ReportResult:
    """Build the report and write its files into `out_dir` (a fresh staging folder)."""
    notes: list[str] = []
    if isinstance(results, pd.DataFrame):
        frame = results
    else:
        frame, notes = load_frame(list(results))
    frame, more = prepare(frame)
    notes.extend(more)
    fits = memory_fits(frame)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    top: dict[str, Figure] = {}
    section_ids = list(dict.fromkeys(frame["section"]))
    single = len(section_ids) == 1

    sections = []
    for number, section in enumerate(section_ids, start=1):
        rows = frame[frame["section"] == section]
        sec_fits = fits[fits["section"] == section]
        slug = f"section-{number}"
        blocks, absent = [], []
        for kind in FIGURES:
            if kind.across_sections and not single:
                continue  # built from every section's rows below
            fig = kind.build(rows, sec_fits)
            kind_tables = tuple(t for t in kind.tables(rows, sec_fits) if t.rows)
            if fig is None and not kind_tables:
                if not kind.optional:
                    absent.append(f"{kind.title}: {kind.absent}")
                continue
            name, png = None, None
            if fig is not None:
                add_footer(fig, provenance_text(rows))
                # One section: its figures are the top-level files (PNG and SVG). Several: each
                # section's figure is a PNG of its own for the page, and the top-level files
                # show every section's panels.
                name = kind.name if single else f"{kind.name}--{slug}"
                png = save(fig, out, name, svg=single)
                written += [out / f"{name}.png"] + ([out / f"{name}.svg"] if single else [])
                if single:
                    top[kind.name] = fig
            blocks.append(FigureBlock(kind, name, png, kind_tables,
                                      tuple(kind.findings(rows, sec_fits)), single))
        sections.append(SectionReport(rows["section_title"].iloc[0], slug,
                                      tables.environment_table(rows), tuple(blocks),
                                      tuple(absent), tables.failures_table(rows),
                                      tuple(findings.noise_findings(rows))))

    if not single:
        across = []
        for kind in FIGURES:
            fig = kind.build(frame, fits)
            if fig is not None:
                add_footer(fig, provenance_text(frame))
                png = save(fig, out, kind.name)
                written += [out / f"{kind.name}.png", out / f"{kind.name}.svg"]
                top[kind.name] = fig
                if kind.across_sections:
                    across.append(FigureBlock(kind, kind.name, png, tuple(t for t in kind.tables(frame, fits) if t.rows),
                                              tuple(kind.findings(frame, fits))))
        if across:  # the page shows them once, after the sections they join
            sections.append(SectionReport("Across sections", "across", tables.environment_table(frame),
                                          tuple(across), (), tables.failures_table(frame.iloc[0:0]), across=True))

    index = out / "index.html"
    files = frame["source"].nunique()
    index.write_text(render_page(title, sections, notes, len(frame), files), encoding="utf-8")
    summary = out / "summary.md"
    summary.write_text(render_summary(title, sections, notes), encoding="utf-8")
    written += [index, summary]
    return ReportResult(out, tuple(written), tuple(sections), tuple(notes), top, len(frame))


__all__ = ["FIGURES", "FigureKind", "ReportResult", "ReportInputError", "build_report"]
