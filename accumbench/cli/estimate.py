"""`accumbench estimate`: predict the CUDA peak of the same cases as `run`, with no GPU."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from accumbench.cli.common import (
    OutPath,
    SEED,
    case_selection_options,
    fail_input,
    int_list,
    open_results,
    select_cases,
    suite_rules,
    validate_cases,
    workload_options,
)

from accumbench.textfmt import format_bytes, text_table

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
                   "moe_routing=balanced|worst (which experts MoE routers pick where routing decides sizes); "
                   "the step-time model's constants too, e.g. host_op_seconds=5e-6, step_host_seconds=2e-3, "
                   "flop_efficiency=0.6, batch_norm_bandwidth=290e9, speed_ratio_error=1.66 (the README's "
                   "step-time section lists them).")
@case_selection_options("smoke, default or a suite .toml file (default: 'default', the GPU suite). "
                        + suite_rules("--amp, --set-to-none/--zero-grads and --loss-norm"))
@click.option("--out", "out_path", type=OutPath(dir_okay=False, path_type=Path),
              default=Path("results/estimate.jsonl"), show_default=True,
              help="JSONL file of estimate records (meter: estimate), appended as each group is done.")
@click.option("--resume", is_flag=True,
              help="Skip the cases already in --out and append the rest (refused when the file was estimated "
                   "with another seed, device kind or torch version).")
@click.option("--overwrite", is_flag=True,
              help="Start --out afresh; the old file is kept as FILE.bak (or FILE.bak.1, ...).")
@click.option("--timeline", is_flag=True,
              help="Also trace each case's fake step into OUT.timelines.jsonl (as run --timeline); "
                   "estimates every case on its own, without the grouped replay, so it is slower.")
@click.option("--list", "list_only", is_flag=True, help="Print the cases that would be estimated, and exit.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for batches (sizes never depend on it).")
@click.option("--parallel", type=click.Choice(["none", "fsdp"]), default="none", show_default=True,
              help="fsdp: predict rank 0's peak under FSDP2 for --world-size ranks, in this process, on a "
                   "fake process group (micro-batch per rank; accumulated with and without sync).")
@click.option("--world-size", type=click.IntRange(min=1), default=None, metavar="W",
              help="With --parallel fsdp: the number of GPUs (ranks) to predict for.")
@click.option("--reshard-after-forward", type=click.Choice(["true", "false"]), default="true",
              show_default=True, help="With --parallel fsdp: as run's.")
@click.option("--fsdp-wrap", default=None, metavar="PATTERN", help="With --parallel fsdp: as run's.")
def estimate(device_kind, assume, suite, workload_spec, workload_opts, scenarios, micro_batch, accum_steps, amp,
             set_to_none, loss_norm, out_path, resume, overwrite, timeline, list_only, seed, parallel="none",
             world_size=None, reshard_after_forward="true", fsdp_wrap=None) -> None:
    """Predict each case's CUDA peak memory and step time on fake tensors, with no GPU.

    The same cases as `run` (same flags), the same scenario step code, run on fake tensors that
    have shapes but no data; live bytes are counted with the CUDA allocator's 512-byte rounding
    and the steady-state peak is the step after one warm-up step. What fake tensors cannot see is
    added from named assumptions of the --device-kind (cuBLAS workspaces, the attention kernel
    CUDA picks and its scratch); every record lists those it applied. A predicted peak above the
    device's memory is recorded as status "oom", keeping the prediction. The step time (and
    from it samples/s, tokens/s and MFU) comes from the step-time model of the fake step's ops
    on the device kind, marked as a prediction: records carry meter "estimate", the time in
    predicted_step_time_s and no measured step times.

    \b
    Examples:
      accumbench estimate                                   # the default (GPU) suite, for an H100
      accumbench estimate --workload gpt --workload-opt size=gpt2 --amp bf16 \\
          --micro-batch 8,16,32 --accum-steps 1,4 --out results/gpt2-estimate.jsonl
      accumbench estimate --device-kind a100 --assume attention_kernel=math
      accumbench estimate --workload hf:llama-3.2-1b --workload-opt seq_len=2048 --amp bf16 --micro-batch 1,4
      accumbench estimate --suite smoke --device-kind cpu   # compare with run --device cpu
      accumbench estimate --parallel fsdp --world-size 8 --workload gpt --workload-opt size=gpt2 \\
          --amp bf16 --micro-batch 8 --accum-steps 4     # rank 0 of 8 GPUs, on this CPU

    The results file follows run's rules: an existing file needs --resume or --overwrite.

    Exit codes: 0 every case estimated (predicted OOM counts), 1 some case failed or the
    results could not be written, 2 bad input, 130 interrupted.
    """
    from accumbench.cli.progress import LineProgress
    from accumbench.estimate import EstimateRunner, estimate_runner, groups_of
    from accumbench.session import execute

    if world_size is not None and parallel != "fsdp":
        fail_input("--world-size needs --parallel fsdp")
    if parallel == "fsdp" and world_size is None:
        fail_input("--parallel fsdp needs --world-size W (the number of GPUs to predict for)")
    assumptions = device_assumptions(device_kind, assume)
    options = workload_options(workload_opts)
    if suite is None and workload_spec is None:
        suite = "default"
    cases = select_cases(
        suite=suite, workload=workload_spec, options=options, scenarios=scenarios,
        micro_batches=int_list(micro_batch, "--micro-batch"), accum_steps=int_list(accum_steps, "--accum-steps"),
        amp=amp, set_to_none=set_to_none, loss_norm=loss_norm, warmup=None, steps=None,
    )
    cases = _without_suite_compiled_cases(cases, from_suite=workload_spec is None)
    results = None if list_only else open_results(out_path, "accumbench estimate", resume=resume,
                                                  overwrite=overwrite)
    if parallel == "fsdp" or world_size is not None:
        from accumbench.cli.fsdp_estimate import estimate_fsdp_command

        return estimate_fsdp_command(cases, assumptions, parallel=parallel, world_size=world_size,
                                     reshard_after_forward=reshard_after_forward == "true", fsdp_wrap=fsdp_wrap,
                                     results=results, timeline=timeline, list_only=list_only, seed=seed)
    if reshard_after_forward != "true" or fsdp_wrap is not None:
        fail_input("--reshard-after-forward and --fsdp-wrap are FSDP settings: add --parallel fsdp --world-size W")
    runner = estimate_runner(assumptions, seed,
                             timeline_sink=results.timeline_sink() if timeline and results else None)
    validate_cases(runner, cases, suite if workload_spec is None else None)
    if list_only:
        for case in cases:
            click.echo(runner.case_id(case))
        click.echo(f"{len(cases)} case(s)", err=True)
        return
    started = time.perf_counter()

    def heading(todo: int, already: int) -> str:
        return (f"accumbench estimate: {todo} case(s) in {groups_of(cases)} group(s) for "
                f"{runner.meter.device_info(runner.device)['device_name']}"
                + (f", {already} already in {out_path}" if already else "") + f" -> {out_path}")

    def summary(records) -> None:
        _print_summary(records, assumptions)
        click.echo(f"estimated in {time.perf_counter() - started:.1f} s", err=True)

    # Lines, not a bar: grouped records arrive in bursts, a bar would jump.
    sys.exit(execute(cases, EstimateRunner(runner, assumptions, each=timeline), results,
                     lambda total: LineProgress(), heading=heading, summary=summary))


def _without_suite_compiled_cases(cases, from_suite: bool):
    """A suite's torch.compile cases left out, with a note, unless --compile asked for them (then
    validate_cases refuses them, exit 2): the default suite has some, and the estimate of the
    rest should not fail for them."""
    from accumbench.cli.common import lever_settings
    from accumbench.levers import ESTIMATE_REFUSES_COMPILE

    compiled = sum(1 for case in cases if case.compile)
    if not compiled or not from_suite or "compile" in lever_settings():
        return cases
    click.echo(f"note: leaving out the suite's {compiled} torch.compile case(s): {ESTIMATE_REFUSES_COMPILE}",
               err=True)
    return [case for case in cases if not case.compile]


def _print_summary(records, assumptions) -> None:
    if not records:
        return
    usable = assumptions.usable_memory_bytes
    speeds = any(r.samples_per_s for r in records)
    rows = [(r.case_id, r.status, format_bytes(r.peak_allocated))
            + ((f"~{r.samples_per_s:,.1f}" if r.samples_per_s else "-",) if speeds else ()) for r in records]
    click.echo(text_table(["case", "status", "predicted peak"] + (["predicted samples/s"] if speeds else []), rows,
                          right=(2, 3) if speeds else (2,)))
    if speeds and assumptions.speed_ratio_error:
        # A predicted speed is a model's: say how far it was off where it was checked.
        click.echo(f"(samples/s from the step-time model, not measured: the ratio of two configurations was off by "
                   f"up to x{assumptions.speed_ratio_error:g} in 95% of held-out pairs on the H100, "
                   "results/estimate-vs-h100/steptime_vs_measured.md)")
    if usable is not None:
        click.echo(f"(usable memory assumed: {format_bytes(usable)} of {format_bytes(assumptions.total_memory_bytes)})")
