"""`accumbench run`: measure cases and append one record per case to a JSONL file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from accumbench.cases import MAX_STEPS
from accumbench.cli.common import (
    OutPath,
    SEED,
    FiniteFloatRange,
    case_selection_options,
    fail_input,
    int_list,
    open_results,
    select_cases,
    suite_rules,
    validate_cases,
    workload_options,
)


@click.command()
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cuda", "cpu"]),
              help="auto takes CUDA when present. The meter follows the device: cuda (allocator "
                   "statistics, CUDA events) or cpu (deterministic live-tensor bytes, wall clock).")
@case_selection_options("smoke, default or a suite .toml file. Without --workload and --suite: 'default' "
                        "on CUDA, 'smoke' on CPU. "
                        + suite_rules("--amp, --set-to-none/--zero-grads, --loss-norm, --warmup and --steps"))
@click.option("--warmup", type=click.IntRange(min=1, max=MAX_STEPS), default=None, help="Warm-up steps before measuring (default 2, or the suite's).")
@click.option("--steps", type=click.IntRange(min=1, max=MAX_STEPS), default=None,
              help="Fix the number of timed optimizer steps (default: adaptive, see --ci-target; "
                   "DDP runs 10 unless given).")
@click.option("--ci-target", type=FiniteFloatRange(min=0, max=1, min_open=True, max_open=True), default=None,
              metavar="FRACTION",
              help="Adaptive timing: after warm-up, time steps until the median step time's 95% "
                   "confidence interval is within +-FRACTION of it (default 0.02 = 2%), or the "
                   "--time-cap is reached; at least 6 steps. Ignored with --steps.")
@click.option("--time-cap", type=FiniteFloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Adaptive timing: at most this many seconds of timed steps per case (default "
                   "0.5 on cpu, 2 on cuda: the smoke suite under a minute on 2 CPU cores, the "
                   "default suite under ten minutes on an H100). Ignored with --steps.")
@click.option("--out", "out_path", type=OutPath(dir_okay=False, path_type=Path),
              default=Path("results/run.jsonl"), show_default=True, help="JSONL file; one record is appended per case.")
@click.option("--resume", is_flag=True,
              help="Skip the cases already in --out (ok or oom) and append the rest; refused when the file was "
                   "measured with other settings (warm-up, steps, seed, meter, device, torch version). A torn "
                   "last line (a run killed mid-write) is cut off and kept in OUT.torn.")
@click.option("--overwrite", is_flag=True,
              help="Start --out afresh; the old file (and its timelines) is kept as FILE.bak, or FILE.bak.1, ... "
                   "when that exists.")
@click.option("--list", "list_only", is_flag=True, help="Print the cases that would run, and exit.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for model initialisation and batches.")
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
              help="FSDP: shard the outermost modules whose qualified name matches this fnmatch pattern, "
                   "e.g. 'blocks.*' (the blocks, not also their submodules; default: ModuleList elements, "
                   "else top-level children).")
def run(device, suite, workload_spec, workload_opts, scenarios, micro_batch, accum_steps, amp, set_to_none,
        loss_norm, warmup, steps, out_path, resume, overwrite, list_only, seed, timeline=False,
        nproc_per_node=None, distributed=False, parallel="ddp", reshard_after_forward="true",
        fsdp_wrap=None, ci_target=None, time_cap=None) -> None:
    """Measure peak memory and throughput of training-step scenarios.

    Every case is warmed up (optimizer state created, workspaces allocated), then measured: steps
    are timed until the median step time is known to +-2% (95% CI) or the per-case time cap is
    reached, and the record says which (`stop_reason`) and the interval. Its record is appended to --out as soon as it is measured, so Ctrl-C or a crash loses nothing.
    An out-of-memory case is recorded as status "oom" and the run goes on.

    \b
    Examples:
      accumbench run --suite smoke --device cpu --out results/smoke.jsonl
      accumbench run --suite smoke --device cpu --ci-target 0.05 --time-cap 2 --out s.jsonl
      accumbench run --suite smoke --device cpu --steps 5 --out fixed-count.jsonl
      accumbench run --device cuda --suite default --out results/h100.jsonl --resume
      accumbench run --workload gpt --workload-opt size=small --micro-batch 4,8 --accum-steps 1,4
      accumbench run --workload my_model.py:build --scenario accumulated --amp bf16
      accumbench run --workload hf:gpt2-small --workload-opt seq_len=512 --amp bf16 --micro-batch 8
      accumbench run --workload two-models --micro-batch 8 --accum-steps 1,2 --timeline
      accumbench run --workload hf:llama-3.2-1b --workload-opt seq_len=2048 --amp bf16 --micro-batch 1,8 \\
          --accum-steps 4 --checkpoint blocks --lora "r=16,targets=q_proj|v_proj"   # memory levers
      accumbench run --nproc-per-node 2 --device cpu --workload gpt --micro-batch 4 --accum-steps 4
      accumbench run --nproc-per-node 2 --device cpu --parallel fsdp --workload gpt --micro-batch 4 \\
          --accum-steps 4 --reshard-after-forward false

    \b
    The results file: an existing one is refused unless --resume or --overwrite; one writer at a
    time (a lock beside it names the holder); checked writable before the first case; a full
    disk mid-run stops cleanly with every complete record kept.

    \b
    With --suite: --scenario filters it; --amp, --set-to-none/--zero-grads, --loss-norm,
    --warmup and --steps override it; --workload, --workload-opt, --micro-batch and
    --accum-steps are refused (they define cases).

    Exit codes: 0 every case measured (OOM counts as measured), 1 some case failed with an
    error or the results could not be written, 2 bad input, 130 interrupted.
    """

    from accumbench.cli.progress import print_summary, progress_for
    from accumbench.runner import Runner, resolve_device
    from accumbench.session import execute

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
    from accumbench.meters.timing import StepPolicy

    try:  # the timing flags checked together (exit 2) before the results file is looked at
        timing = StepPolicy.for_device(torch_device.type, ci_target, time_cap)
    except ValueError as exc:
        fail_input(str(exc))
    results = None if list_only else open_results(out_path, "accumbench run", resume=resume, overwrite=overwrite)
    runner = Runner(torch_device, seed=seed, timeline_sink=results.timeline_sink() if timeline and results else None,
                    timing=timing)
    validate_cases(runner, cases, suite if workload_spec is None else None)
    if list_only:
        for case in cases:
            click.echo(runner.case_id(case))
        click.echo(f"{len(cases)} case(s)", err=True)
        return

    def heading(todo: int, already: int) -> str:
        return (f"accumbench: {todo} case(s) on {runner.meter.name} ({torch_device})"
                + (f", {already} already in {out_path}" if already else "") + f" -> {out_path}")

    sys.exit(execute(cases, runner, results, progress_for, heading=heading, summary=print_summary))
