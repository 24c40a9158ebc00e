"""`accumbench run --distributed` and `--nproc-per-node N`: the DDP side of the run command.

`--nproc-per-node N` checks the input here, then launches `torchrun` with `--distributed` and
the same flags. Under torchrun each rank selects the same cases; rank 0 alone decides what the
results file holds (resume, overwrite), prints progress and writes the records.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import click

from accumbench.cli.common import claim_results_file, fail_input, results_file_problem, timeline_sink

# Options the relaunch sets itself rather than copies from the command line.
_NOT_COPIED = ("nproc_per_node", "distributed", "device")


def run_ddp(*, torch_device, cases: Sequence[Any], seed: int, out_path: Path, resume: bool, overwrite: bool,
            list_only: bool, distributed: bool, nproc_per_node: int | None, timeline: bool = False,
            parallel: str = "ddp", reshard_after_forward: bool = True, fsdp_wrap: str | None = None) -> None:
    """Launch torchrun (`nproc_per_node`) or run this process's rank (`distributed`); `timeline`
    traces each case on every rank and keeps rank 0's curve (the flag travels to the ranks).
    `parallel` "fsdp" runs the cases under FSDP2 (`accumbench.distributed.fsdp`) instead of DDP."""
    from accumbench.distributed import ddp_cases
    from accumbench.distributed.fsdp import fsdp_cases

    if distributed and nproc_per_node is not None:
        fail_input("pass either --nproc-per-node N (launches torchrun) or --distributed (already under "
                   "torchrun), not both")
    if parallel == "fsdp":
        dcases, skipped = fsdp_cases(cases, reshard_after_forward, fsdp_wrap)
    else:
        dcases, skipped = ddp_cases(cases)
    if not dcases:
        fail_input(f"{parallel.upper()} runs the large-batch and accumulated scenarios; every selected case is "
                   "multi-task")
    if nproc_per_node is not None:
        _launch(torch_device, dcases, skipped, out_path, resume, overwrite, list_only, nproc_per_node)
    else:
        _run_rank(torch_device, dcases, skipped, seed, out_path, resume, overwrite, list_only, timeline)


def relaunch_args(ctx: click.Context, device_type: str) -> list[str]:
    """The `run` flags given on the command line, rebuilt from `ctx` for the torchrun ranks:
    `--device` resolved (auto -> cuda/cpu), `--nproc-per-node` dropped."""
    from click.core import ParameterSource

    args = ["--device", device_type]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in _NOT_COPIED:
            continue
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        # Lever flags (expose_value=False) live in the context's meta, not in its params.
        value = ctx.params[param.name] if param.name in ctx.params else \
            ctx.meta.get("accumbench.levers", {}).get(param.name)
        if param.is_flag and param.secondary_opts:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            if value:
                args.append(param.opts[0])
        elif param.multiple:
            for item in value:
                args += [param.opts[0], str(item)]
        else:
            args += [param.opts[0], str(value)]
    return args


def _case_id(workload_name: str, dcase, optimizer: str, world_size: int) -> str:
    """The record id of a DDP or an FSDP case."""
    from accumbench.distributed import DdpCase, ddp_case_id
    from accumbench.distributed.fsdp import fsdp_case_id

    return (ddp_case_id if isinstance(dcase, DdpCase) else fsdp_case_id)(workload_name, dcase, optimizer, world_size)


def _check_cases(dcases) -> dict[tuple, Any]:
    """Load every workload and check every scenario fits it, before anything runs."""
    from accumbench.scenarios import check_compatible
    from accumbench.workloads import WorkloadError, load_workload

    workloads: dict[tuple, Any] = {}
    for dcase in dcases:
        case = dcase.case
        key = (case.workload, case.options)
        try:
            if key not in workloads:
                workloads[key] = load_workload(case.workload, case.options_dict)
            check_compatible(case.scenario, workloads[key])
            if case.compile:
                raise ValueError("--compile is not measured under DDP yet; run it without --nproc-per-node")
        except (WorkloadError, ValueError) as exc:
            fail_input(str(exc))
    return workloads


def _note_skipped(skipped) -> None:
    if skipped:
        click.echo(f"note: {len(skipped)} multi-task case(s) skipped: DDP runs large-batch and accumulated",
                   err=True)


def _launch(torch_device, dcases, skipped, out_path, resume, overwrite, list_only, nproc_per_node) -> None:
    """Check the input in this process (one clear error, not one per rank), then run torchrun."""
    import torch

    from accumbench.distributed import launch_torchrun
    from accumbench.runner import default_optimizer_label

    if torch_device.type == "cuda" and nproc_per_node > torch.cuda.device_count():
        fail_input(f"--nproc-per-node {nproc_per_node} needs {nproc_per_node} GPUs; "
                   f"{torch.cuda.device_count()} visible")
    workloads = _check_cases(dcases)
    if list_only:
        for dcase in dcases:
            workload = workloads[(dcase.case.workload, dcase.case.options)]
            click.echo(_case_id(workload.name, dcase, default_optimizer_label(workload), nproc_per_node))
        click.echo(f"{len(dcases)} case(s) at world size {nproc_per_node}", err=True)
        return
    problem = results_file_problem(out_path, resume, overwrite)  # checked here; the ranks claim the file
    if problem:
        fail_input(problem)
    _note_skipped(skipped)
    args = relaunch_args(click.get_current_context(), torch_device.type)
    sys.exit(launch_torchrun(nproc_per_node, args, torch_device.type))


def _run_rank(torch_device, dcases, skipped, seed, out_path, resume, overwrite, list_only, timeline) -> None:
    """This rank's part of the job; rank 0 talks and writes, the others only measure."""
    from accumbench.distributed import (
        DistributedError,
        hand_back_exit_code,
        init_distributed,
        shutdown,
        timeout_from_env,
    )

    try:
        groups = init_distributed(torch_device, timeout_from_env())
    except DistributedError as exc:
        fail_input(str(exc))
    code = 0
    try:
        _run_joined(groups, dcases, skipped, seed, out_path, resume, overwrite, list_only, timeline)
    except SystemExit as exc:  # every rank ends with the same code (fail_input, errors, Ctrl-C)
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        shutdown()
    sys.exit(hand_back_exit_code(code, groups.context.is_writer))


def _run_joined(groups, dcases, skipped, seed, out_path, resume, overwrite, list_only, timeline) -> None:
    from accumbench.cli.run import _close, _LineProgress, _print_summary, _RichProgress
    from accumbench.distributed import DistributedRunner
    from accumbench.records import append_record

    _check_cases(dcases)  # same input on every rank: every rank stops alike
    from accumbench.distributed.fsdp import FsdpCase
    from accumbench.distributed.fsdp_runner import FsdpRunner

    runner_class = FsdpRunner if dcases and isinstance(dcases[0], FsdpCase) else DistributedRunner
    runner = runner_class(groups, seed=seed, trace_timelines=timeline,
                          timeline_sink=timeline_sink(out_path) if timeline else None)
    context = runner.context
    writer = runner.is_writer
    if list_only:
        if writer:
            for dcase in dcases:
                click.echo(runner.case_id(dcase))
        return

    # Rank 0 alone reads and moves the results file; the others follow its decision.
    decision: tuple[str, Any] | None = None
    if writer:
        try:
            decision = ("ok", claim_results_file(out_path, resume, overwrite))
        except ValueError as exc:
            decision = ("error", str(exc))
    kind, payload = groups.broadcast(decision)
    if kind == "error":
        if writer:
            fail_input(payload)
        sys.exit(2)
    done: set[str] = payload
    todo = [d for d in dcases if runner.case_id(d) not in done]
    progress = None
    if writer:
        _note_skipped(skipped)
        click.echo(
            f"accumbench: {len(todo)} case(s) on {runner.meter_name} ({context.device}) x {context.world_size} "
            f"rank(s), {context.backend}"
            + (f", {len(dcases) - len(todo)} already in {out_path}" if done else "")
            + f" -> {out_path}", err=True,
        )
        progress = _RichProgress(len(todo)) if sys.stderr.isatty() else _LineProgress()
    try:
        records = runner.run(todo, sink=lambda r: append_record(out_path, r), progress=progress)
    except KeyboardInterrupt:
        if writer:
            _close(progress)
            click.echo(f"\ninterrupted; the records measured are in {out_path}; "
                       "run again with --resume to measure the rest", err=True)
        sys.exit(130)
    if writer:
        _close(progress)
        _print_summary(records)
        click.echo(f"wrote {len(records)} record(s) to {out_path}", err=True)
    errors = [r for r in records if r.status == "error"]
    if errors:
        if writer:
            click.echo(f"{len(errors)} case(s) failed with an error (see the 'error' field)", err=True)
        sys.exit(1)
