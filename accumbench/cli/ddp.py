"""`accumbench run --distributed` and `--nproc-per-node N`: the DDP side of the run command.

`--nproc-per-node N` checks the input here, then launches `torchrun` with `--distributed` and
the same flags, holding the results file's lock for the ranks. Under torchrun each rank selects
the same cases and calls `session.execute`; rank 0 alone claims the results file (resume,
overwrite), prints progress and writes the records.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import click

from accumbench.cli.common import fail_input, open_results

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


def _check_cases(dcases, build: bool = True):
    """Load every workload and check every scenario fits it, before anything runs; return the
    loaded workloads (a `runner.WorkloadCache`). With `build`, also build each model on the meta
    device to check an `--fsdp-wrap` pattern (`--list` builds nothing)."""
    from accumbench.distributed.fsdp import check_wrap
    from accumbench.runner import WorkloadCache
    from accumbench.scenarios import check_compatible
    from accumbench.workloads import WorkloadError

    workloads = WorkloadCache()
    wraps_checked = set()
    for dcase in dcases:
        try:
            workload = workloads.get(dcase.case)
            check_compatible(dcase.case.scenario, workload, dcase.case.loss_norm)
            if dcase.case.compile:
                raise ValueError("--compile is not measured under DDP yet; run it without --nproc-per-node")
            wrap = getattr(dcase, "wrap", None)
            if build and (id(workload), wrap) not in wraps_checked:
                check_wrap(workload, wrap)
                wraps_checked.add((id(workload), wrap))
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

    from accumbench.distributed import DistributedError, launch_torchrun, timeout_from_env
    from accumbench.runner import default_optimizer_label

    try:
        timeout_from_env()  # each rank reads it: a bad value is said once, here
    except DistributedError as exc:
        fail_input(str(exc))
    if torch_device.type == "cuda" and nproc_per_node > torch.cuda.device_count():
        fail_input(f"--nproc-per-node {nproc_per_node} needs {nproc_per_node} GPUs; "
                   f"{torch.cuda.device_count()} visible")
    workloads = _check_cases(dcases, build=not list_only)
    if list_only:
        for dcase in dcases:
            workload = workloads.get(dcase.case)
            click.echo(dcase.case_id(workload.name, default_optimizer_label(workload), nproc_per_node))
        click.echo(f"{len(dcases)} case(s) at world size {nproc_per_node}", err=True)
        return
    import os

    from accumbench.results_file import LOCK_HOLDER_ENV, ResultsFileError

    # Checked and locked here, for the whole job; rank 0 claims the file under this lock.
    results = open_results(out_path, "accumbench run --nproc-per-node", resume=resume, overwrite=overwrite)
    try:
        results.lock()
    except ResultsFileError as exc:
        fail_input(str(exc))
    with results:
        _note_skipped(skipped)
        args = relaunch_args(click.get_current_context(), torch_device.type)
        os.environ[LOCK_HOLDER_ENV] = str(results.lock_path.resolve())
        try:
            code = launch_torchrun(nproc_per_node, args, torch_device.type)
        finally:
            os.environ.pop(LOCK_HOLDER_ENV, None)
    sys.exit(code)


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
    from accumbench.cli.progress import print_summary, progress_for
    from accumbench.distributed import DistributedRunner
    from accumbench.results_file import ResultsFile
    from accumbench.session import execute

    _check_cases(dcases)  # same input on every rank: every rank stops alike
    from accumbench.distributed.fsdp import FsdpCase
    from accumbench.distributed.fsdp_runner import FsdpRunner

    # Rank 0 alone touches the file (in `execute`); the others follow its decision.
    results = ResultsFile(out_path, resume=resume, overwrite=overwrite, command="accumbench run --distributed")
    runner_class = FsdpRunner if dcases and isinstance(dcases[0], FsdpCase) else DistributedRunner
    runner = runner_class(groups, seed=seed, trace_timelines=timeline,
                          timeline_sink=results.timeline_sink() if timeline else None)
    context = runner.context
    if list_only:
        if runner.is_writer:
            for dcase in dcases:
                click.echo(runner.case_id(dcase))
        return
    if runner.is_writer:
        _note_skipped(skipped)

    def heading(todo: int, already: int) -> str:
        return (f"accumbench: {todo} case(s) on {runner.meter_name} ({context.device}) x {context.world_size} "
                f"rank(s), {context.backend}" + (f", {already} already in {out_path}" if already else "")
                + f" -> {out_path}")

    sys.exit(execute(dcases, runner, results, progress_for, heading=heading, summary=print_summary))
