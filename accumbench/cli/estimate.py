"""`accumbench estimate`: predict the CUDA peak of the same cases as `run`, with no GPU."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from accumbench.cli.common import (
    case_selection_options,
    fail_input,
    format_bytes,
    int_list,
    select_cases,
    timeline_sink,
    validate_cases,
    workload_options,
)

DEVICE_KINDS = ["h100", "h200", "a100", "cpu"]


def device_assumptions(device_kind: str, assume: tuple[str, ...]):
    """The named device kind's assumptions with --assume overrides; exit 2 on bad input."""
    from accumbench.estimate_assumptions import assumptions_for, parse_overrides

    try:
        return assumptions_for(device_kind, parse_overrides(assume))
    except ValueError as exc:
        fail_input(str(exc))


@click.command()
@click.option("--device-kind", type=click.Choice(DEVICE_KINDS), default="h100", show_default=True,
              help="The device to predict for; sets the assumptions below. cpu predicts the cpu meter "
                   "(exact sizes, no workspaces): how the estimate is checked without a GPU.")
@click.option("--assume", "assume", multiple=True, metavar="KEY=VALUE",
              help="Override one assumption, repeatable: cublas_workspace_bytes=32MiB, "
                   "cublaslt_workspace_bytes=1MiB, gemm_threads=2, attention_kernel=auto|flash|efficient|math, "
                   "attention_scratch=true, cudnn_workspace_bytes=8MiB, scratch_bytes=0, "
                   "allocator_round_bytes=512, total_memory_bytes=80GiB, reserve_bytes=1GiB, cuda_autocast=true, "
                   "moe_routing=balanced|worst (which experts MoE routers pick where routing decides sizes).")
@case_selection_options("smoke, default or a suite .toml file (default: 'default', the GPU suite).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("results/estimate.jsonl"), show_default=True,
              help="JSONL file of estimate records (meter: estimate); replaced if it exists.")
@click.option("--timeline", is_flag=True,
              help="Also trace each case's fake step into OUT.timelines.jsonl (as run --timeline); "
                   "estimates every case on its own, without the grouped replay, so it is slower.")
@click.option("--list", "list_only", is_flag=True, help="Print the cases that would be estimated, and exit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for batches (sizes never depend on it).")
def estimate(device_kind, assume, suite, workload_spec, workload_opts, scenarios, micro_batch, accum_steps, amp,
             set_to_none, loss_norm, out_path, timeline, list_only, seed) -> None:
    """Predict each case's CUDA peak memory on fake tensors, with no GPU.

    The same cases as `run` (same flags), the same scenario step code, run on fake tensors that
    have shapes but no data; live bytes are counted with the CUDA allocator's 512-byte rounding
    and the steady-state peak is the step after one warm-up step. What fake tensors cannot see is
    added from named assumptions of the --device-kind (cuBLAS workspaces, the attention kernel
    CUDA picks and its scratch); every record lists those it applied. A predicted peak above the
    device's memory is recorded as status "oom", keeping the prediction. Records carry
    meter "estimate" and no step times.

    \b
    Examples:
      accumbench estimate                                   # the default (GPU) suite, for an H100
      accumbench estimate --workload gpt --workload-opt size=gpt2 --amp bf16 \\
          --micro-batch 8,16,32 --accum-steps 1,4 --out results/gpt2-estimate.jsonl
      accumbench estimate --device-kind a100 --assume attention_kernel=math
      accumbench estimate --suite smoke --device-kind cpu   # compare with run --device cpu

    Exit codes: 0 every case estimated (predicted OOM counts), 1 some case failed, 2 bad input.
    """
    from accumbench.estimate import estimate_cases, estimate_each, estimate_runner, groups_of
    from accumbench.timeline import sidecar_path
    from accumbench.records import write_records

    assumptions = device_assumptions(device_kind, assume)
    options = workload_options(workload_opts)
    if suite is None and workload_spec is None:
        suite = "default"
    cases = select_cases(
        suite=suite, workload=workload_spec, options=options, scenarios=scenarios,
        micro_batches=int_list(micro_batch, "--micro-batch"), accum_steps=int_list(accum_steps, "--accum-steps"),
        amp=amp, set_to_none=set_to_none, loss_norm=loss_norm, warmup=None, steps=None,
    )
    runner = estimate_runner(assumptions, seed, timeline_sink=timeline_sink(out_path) if timeline else None)
    validate_cases(runner, cases)
    if list_only:
        for case in cases:
            click.echo(runner.case_id(case))
        click.echo(f"{len(cases)} case(s)", err=True)
        return
    click.echo(f"accumbench estimate: {len(cases)} case(s) in {groups_of(cases)} group(s) for "
               f"{runner.meter.device_info(runner.device)['device_name']} -> {out_path}", err=True)
    started = time.perf_counter()
    done: list = []

    def progress(record) -> None:
        done.append(record)
        click.echo(f"[{len(done)}/{len(cases)}] {record.case_id}: "
                   + (format_bytes(record.peak_allocated) if record.peak_allocated is not None else record.status),
                   err=True)

    try:
        if timeline:
            sidecar_path(out_path).unlink(missing_ok=True)  # replaced, as the results file is
            records = estimate_each(cases, runner, assumptions, on_record=progress)
        else:
            records = estimate_cases(cases, assumptions, runner=runner, on_record=progress)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted after {len(done)} record(s); nothing written", err=True)
        sys.exit(130)
    write_records(out_path, records)
    _print_summary(records, assumptions)
    click.echo(f"wrote {len(records)} estimate record(s) to {out_path} in {time.perf_counter() - started:.1f} s",
               err=True)
    errors = [r for r in records if r.status == "error"]
    if errors:
        click.echo(f"{len(errors)} case(s) failed with an error (see the 'error' field)", err=True)
        sys.exit(1)


def _print_summary(records, assumptions) -> None:
    if not records:
        return
    usable = assumptions.usable_memory_bytes
    width = max(len(r.case_id) for r in records)
    click.echo(f"{'case':<{width}}  {'status':<6}  {'predicted peak':>14}")
    for r in records:
        peak = format_bytes(r.peak_allocated) if r.peak_allocated is not None else "-"
        click.echo(f"{r.case_id:<{width}}  {r.status:<6}  {peak:>14}")
    if usable is not None:
        click.echo(f"(usable memory assumed: {format_bytes(usable)} of {format_bytes(assumptions.total_memory_bytes)})")
