"""Argument parsing and formatting shared by the commands (nothing here measures anything)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

import click

# Re-exported: the commands (and tests) format bytes as `accumbench.cli.common.format_bytes`.
from accumbench.textfmt import format_bytes  # noqa: F401

SCENARIO_NAMES = ["large-batch", "accumulated", "multitask-combined", "multitask-sequential"]
SINGLE_LOSS_DEFAULT = ("large-batch", "accumulated")
MULTITASK_DEFAULT = ("multitask-combined", "multitask-sequential")


def case_selection_options(suite_help: str):
    """The flags that select cases, shared by `run` and `estimate` so both take the same cases:
    --suite (its help says that command's default), --workload, --workload-opt, --scenario,
    --micro-batch, --accum-steps, --amp, --set-to-none/--zero-grads and --loss-norm."""
    options = [
        click.option("--suite", default=None, help=suite_help),
        click.option("--workload", "workload_spec", default=None,
                     help="Built-in (gpt, convnet-bn, convnet-gn, mlp, two-models, shared-trunk) or a plug-in "
                          "path/to/file.py:factory or package.module:factory. Defines the cases from flags."),
        click.option("--workload-opt", "workload_opts", multiple=True, metavar="KEY=VALUE",
                     help="Option for the workload factory, repeatable, e.g. size=small, seq_len=256, padded=true."),
        click.option("--scenario", "scenarios", multiple=True, type=click.Choice(SCENARIO_NAMES),
                     help="Repeatable. With --workload: the scenarios to run (default: large-batch and "
                          "accumulated, or both multi-task ones). With a suite: keep only these."),
        click.option("--micro-batch", default="4,8,16", show_default=True,
                     help="Comma-separated micro-batch sizes (with --workload)."),
        click.option("--accum-steps", default="1,2,4", show_default=True,
                     help="Comma-separated accumulation steps (with --workload)."),
        click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default=None,
                     help="Autocast dtype; fp16 uses a GradScaler across the accumulation window. "
                          "Default: none, or the suite's."),
        click.option("--set-to-none/--zero-grads", "set_to_none", default=None,
                     help="zero_grad(set_to_none=True) frees gradients between steps (default); "
                          "--zero-grads keeps them allocated as zeros."),
        click.option("--loss-norm", type=click.Choice(["mean", "token"]), default=None,
                     help="mean: each micro-batch's mean loss / N. token: weight by valid-token count "
                          "(sum / total tokens)."),
    ]

    def decorate(command):
        for option in reversed(options):  # click lists options in decorator order, top first
            command = option(command)
        return command

    return decorate


def fail_input(message: str) -> NoReturn:
    """Print one clear line and exit 2 (usage or input error)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def int_list(text: str, flag: str) -> list[int]:
    """Parse '8,16,32' into [8, 16, 32]; exit 2 with a message on anything else."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail_input(f"{flag} takes comma-separated positive integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        fail_input(f"{flag} takes comma-separated positive integers, got {text!r}")
    return values


def workload_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse repeated KEY=VALUE options (values typed by `parse_option_value`)."""
    from accumbench.workloads import parse_option_value

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail_input(f"--workload-opt takes KEY=VALUE, got {pair!r}")
        options[key.strip()] = parse_option_value(value)
    return options


def select_cases(*, suite, workload, options, scenarios, micro_batches, accum_steps, amp, set_to_none,
                 loss_norm, warmup, steps):
    """The cases a command's flags select: from --workload and the grid flags, or from a suite
    (filtered by --scenario, knobs overridden by the flags that were given)."""
    from accumbench.cases import SuiteError, expand_group, load_suite, override
    from accumbench.workloads import WorkloadError, load_workload

    knobs = {"amp": amp, "set_to_none": set_to_none, "loss_norm": loss_norm, "warmup": warmup, "steps": steps}
    try:
        if workload is not None:
            if not scenarios:
                try:
                    multitask = load_workload(workload, options).is_multitask
                except WorkloadError as exc:
                    fail_input(str(exc))
                scenarios = MULTITASK_DEFAULT if multitask else SINGLE_LOSS_DEFAULT
            cases = expand_group(workload, list(scenarios), micro_batches, accum_steps, options=options,
                                 knobs={k: v for k, v in knobs.items() if v is not None})
        else:
            cases = load_suite(suite)
            if scenarios:
                cases = [c for c in cases if c.scenario in scenarios]
            cases = override(cases, **knobs)
    except SuiteError as exc:
        fail_input(str(exc))
    return cases


def validate_cases(runner, cases) -> None:
    """Load every workload and check every scenario fits it before measuring anything; exit 2
    with the first problem."""
    from accumbench.scenarios import check_compatible
    from accumbench.workloads import WorkloadError

    if not cases:
        fail_input("no cases selected")
    for case in cases:
        try:
            check_compatible(case.scenario, runner.workload(case))
        except (WorkloadError, ValueError) as exc:
            fail_input(str(exc))


def timeline_sink(out_path: Path):
    """Append each timeline to OUT.timelines.jsonl; the record keeps that file's name."""
    from accumbench.timeline import append_timeline, sidecar_path

    path = sidecar_path(out_path)

    def sink(record, timeline) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        append_timeline(path, timeline)
        return path.name

    return sink


def _set_aside_results(out_path: Path) -> None:
    """`--overwrite`: keep the old results file, and its timelines, as FILE.bak."""
    from accumbench.timeline import sidecar_path

    for path in (out_path, sidecar_path(out_path)):
        if path.exists():
            path.replace(path.with_name(path.name + ".bak"))


def results_file_problem(out_path: Path, resume: bool, overwrite: bool) -> str | None:
    """Why `run` cannot write to `out_path` as asked (it holds results and neither --resume nor
    --overwrite was given), or None. Changes nothing."""
    if out_path.exists() and out_path.stat().st_size > 0 and not (resume or overwrite):
        return (f"{out_path} already holds results; pass --resume to add the missing cases, "
                "--overwrite to start afresh, or another --out")
    return None


def claim_results_file(out_path: Path, resume: bool, overwrite: bool) -> set[str]:
    """Make `out_path` ready for `run` to append to; return the case ids already measured there
    (ok or oom) that --resume skips. --overwrite sets the old file and its timelines aside as
    FILE.bak. Raises ValueError, with one line for the user, when the file cannot be used."""
    from accumbench.records import RecordError, iter_records

    problem = results_file_problem(out_path, resume, overwrite)
    if problem:
        raise ValueError(problem)
    if not (out_path.exists() and out_path.stat().st_size > 0):
        return set()
    if resume:
        try:
            return {r.case_id for r in iter_records(out_path) if r.status in ("ok", "oom")}
        except RecordError as exc:
            raise ValueError(f"cannot resume: {exc}") from None
    _set_aside_results(out_path)
    return set()

