"""`accumbench run`: measure cases and append one record per case to a JSONL file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from accumbench.cli.common import (
    case_selection_options,
    claim_results_file,
    fail_input,
    format_bytes,
    int_list,
    select_cases,
    timeline_sink,
    validate_cases,
    workload_options,
)


class _LineProgress:
    """One line per finished case: readable in CI logs and pipes."""

    def case_started(self, index, total, case) -> None:
        click.echo(f"[{index}/{total}] {case.label()} ...", err=True, nl=False)

    def case_finished(self, index, total, case, record) -> None:
        if record.status == "ok":
            detail = f"peak {format_bytes(record.peak_allocated)}, {record.samples_per_s:,.1f} samples/s"
        else:
            detail = f"{record.status.upper()}: {record.error}"
        click.echo(f" {detail}", err=True)


class _RichProgress:
    """A progress bar: case i/n, what runs now, the last peak."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[last]}"), transient=False,
        )
        self._task = self._progress.add_task("starting", total=total, last="")
        self._progress.start()

    def case_started(self, index, total, case) -> None:
        self._progress.update(self._task, description=case.label(), completed=index - 1)

    def case_finished(self, index, total, case, record) -> None:
        last = (f"last peak {format_bytes(record.peak_allocated)}" if record.status == "ok"
                else f"last: {record.status.upper()}")
        self._progress.update(self._task, completed=index, last=last)

    def close(self) -> None:
        self._progress.stop()


@click.command()
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cuda", "cpu"]),
              help="auto takes CUDA when present. The meter follows the device: cuda (allocator "
                   "statistics, CUDA events) or cpu (deterministic live-tensor bytes, wall clock).")
@case_selection_options("smoke, default or a suite .toml file. Without --workload and --suite: 'default' "
                        "on CUDA, 'smoke' on CPU.")
@click.option("--warmup", type=click.IntRange(min=1), default=None, help="Warm-up steps before measuring (default 2, or the suite's).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Measured optimizer steps (default 5, or the suite's).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("results/run.jsonl"), show_default=True, help="JSONL file; one record is appended per case.")
@click.option("--resume", is_flag=True, help="Skip the cases already in --out (ok or oom) and append the rest.")
@click.option("--overwrite", is_flag=True, help="Start --out afresh (the old file is kept as FILE.bak).")
@click.option("--list", "list_only", is_flag=True, help="Print the cases that would run, and exit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for model initialisation and batches.")
@click.option("--timeline", is_flag=True,
              help="Also trace one more step per case and store its memory curve with phase marks in "
                   "OUT.timelines.jsonl (the record's 'timeline' field names it). Off by default; never "
                   "changes the measured numbers.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None, metavar="N",
              help="Run under DistributedDataParallel on N local processes (one GPU each on CUDA, gloo on "
                   "the CPU): launches torchrun with --distributed and these flags. accumulated runs with "
                   "and without no_sync(); multi-task scenarios are skipped.")
@click.option("--distributed", is_flag=True,
              help="This process is a rank of a torchrun job (torchrun --nproc-per-node N -m accumbench run "
                   "--distributed ...); rank 0 writes --out. Collective timeout: $ACCUMBENCH_DIST_TIMEOUT "
                   "seconds (default 300).")
@click.option("--parallel", type=click.Choice(["ddp", "fsdp"]), default="ddp", show_default=True,
              help="With --nproc-per-node/--distributed: DistributedDataParallel, or FSDP2 fully_shard on "
                   "each transformer block (or top-level child) and the root; accumulated runs with the "
                   "gradient reduce-scatter skipped until the last micro-step, and on every micro-step.")
@click.option("--reshard-after-forward", type=click.Choice(["true", "false"]), default="true",
              show_default=True, help="FSDP: free the gathered parameters after each unit's forward "
                                      "(all-gather them again in backward), or keep them.")
@click.option("--fsdp-wrap", default=None, metavar="PATTERN",
              help="FSDP: shard the modules whose qualified name matches this fnmatch pattern, e.g. "
                   "'blocks.*' (default: ModuleList elements, else top-level children).")
def run(device, suite, workload_spec, workload_opts, scenarios, micro_batch, accum_steps, amp, set_to_none,
        loss_norm, warmup, steps, out_path, resume, overwrite, list_only, seed, timeline=False,
        nproc_per_node=None, distributed=False, parallel="ddp", reshard_after_forward="true",
        fsdp_wrap=None) -> None:
    """Measure peak memory and throughput of training-step scenarios.

    Every case is warmed up (optimizer state created, workspaces allocated), then measured; its
    record is appended to --out as soon as it is measured, so Ctrl-C or a crash loses nothing.
    An out-of-memory case is recorded as status "oom" and the run goes on.

    \b
    Examples:
      accumbench run --suite smoke --device cpu --out results/smoke.jsonl
      accumbench run --device cuda --suite default --out results/h100.jsonl --resume
      accumbench run --workload gpt --workload-opt size=small --micro-batch 4,8 --accum-steps 1,4
      accumbench run --workload my_model.py:build --scenario accumulated --amp bf16
      accumbench run --workload hf:gpt2-small --workload-opt seq_len=512 --amp bf16 --micro-batch 8
      accumbench run --workload two-models --micro-batch 8 --accum-steps 1,2 --timeline
      accumbench run --nproc-per-node 2 --device cpu --workload gpt --micro-batch 4 --accum-steps 4
      accumbench run --nproc-per-node 2 --device cpu --parallel fsdp --workload gpt --micro-batch 4 \
          --accum-steps 4 --reshard-after-forward false

    Exit codes: 0 every case measured (OOM counts as measured), 1 some case failed with an
    error, 2 bad input, 130 interrupted.
    """

    from accumbench.records import append_record
    from accumbench.runner import Runner, resolve_device

    try:
        torch_device = resolve_device(device)
    except ValueError as exc:
        fail_input(str(exc))
    options = workload_options(workload_opts)
    if suite is None and workload_spec is None:
        suite = "default" if torch_device.type == "cuda" else "smoke"
    cases = select_cases(
        suite=suite, workload=workload_spec, options=options, scenarios=scenarios,
        micro_batches=int_list(micro_batch, "--micro-batch"), accum_steps=int_list(accum_steps, "--accum-steps"),
        amp=amp, set_to_none=set_to_none, loss_norm=loss_norm, warmup=warmup, steps=steps,
    )
    if parallel != "fsdp" and (reshard_after_forward != "true" or fsdp_wrap is not None):
        fail_input("--reshard-after-forward and --fsdp-wrap are FSDP settings: add --parallel fsdp")
    if parallel == "fsdp" and not (distributed or nproc_per_node is not None):
        fail_input("--parallel fsdp runs on torchrun: add --nproc-per-node N (or --distributed under torchrun)")
    if distributed or nproc_per_node is not None:  # DDP and FSDP: see accumbench/cli/ddp.py
        from accumbench.cli.ddp import run_ddp

        return run_ddp(torch_device=torch_device, cases=cases, seed=seed, out_path=out_path, resume=resume,
                       overwrite=overwrite, list_only=list_only, distributed=distributed,
                       nproc_per_node=nproc_per_node, timeline=timeline, parallel=parallel,
                       reshard_after_forward=reshard_after_forward == "true", fsdp_wrap=fsdp_wrap)
    runner = Runner(torch_device, seed=seed, timeline_sink=timeline_sink(out_path) if timeline else None)
    validate_cases(runner, cases)
    if list_only:
        for case in cases:
            click.echo(runner.case_id(case))
        click.echo(f"{len(cases)} case(s)", err=True)
        return

    try:
        done = claim_results_file(out_path, resume, overwrite)
    except ValueError as exc:
        fail_input(str(exc))
    todo = [c for c in cases if runner.case_id(c) not in done]
    click.echo(
        f"accumbench: {len(todo)} case(s) on {runner.meter.name} ({torch_device})"
        + (f", {len(cases) - len(todo)} already in {out_path}" if done else "")
        + f" -> {out_path}", err=True,
    )
    progress = _RichProgress(len(todo)) if sys.stderr.isatty() else _LineProgress()
    records: list = []

    def keep(record) -> None:
        append_record(out_path, record)  # on disk at once: Ctrl-C or a crash loses nothing
        records.append(record)

    try:
        runner.run(todo, sink=keep, progress=progress)
    except KeyboardInterrupt:
        _close(progress)
        click.echo(f"\ninterrupted: {len(records)} record(s) kept in {out_path}; "
                   "run again with --resume to measure the rest", err=True)
        sys.exit(130)
    _close(progress)
    _print_summary(records)
    errors = [r for r in records if r.status == "error"]
    click.echo(f"wrote {len(records)} record(s) to {out_path}", err=True)
    if errors:
        click.echo(f"{len(errors)} case(s) failed with an error (see the 'error' field)", err=True)
        sys.exit(1)


def _close(progress) -> None:
    if hasattr(progress, "close"):
        progress.close()


def _print_summary(records) -> None:
    if not records:
        return
    width = max(len(r.case_id) for r in records)
    click.echo(f"{'case':<{width}}  {'status':<6}  {'peak':>10}  {'samples/s':>12}")
    for r in records:
        peak = format_bytes(r.peak_allocated) if r.peak_allocated is not None else "-"
        speed = f"{r.samples_per_s:,.1f}" if r.samples_per_s else "-"
        click.echo(f"{r.case_id:<{width}}  {r.status:<6}  {peak:>10}  {speed:>12}")
