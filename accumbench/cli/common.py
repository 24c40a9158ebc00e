"""Argument parsing and formatting shared by the commands (nothing here measures anything)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

import click

# Re-exported: the commands (and tests) format bytes as `accumbench.cli.common.format_bytes`.
from accumbench.textfmt import format_bytes  # noqa: F401


class OutPath(click.Path):
    """`click.Path` for what a command writes: an empty value (which pathlib reads as the
    current folder) is refused like any other bad path, in one line."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The path, or a usage error (exit 2) for an empty one."""
        if isinstance(value, str) and not value.strip():
            self.fail("the path is empty", param, ctx)
        return super().convert(value, param, ctx)


SCENARIO_NAMES = ["large-batch", "accumulated", "multitask-combined", "multitask-sequential"]
SINGLE_LOSS_DEFAULT = ("large-batch", "accumulated")
MULTITASK_DEFAULT = ("multitask-combined", "multitask-sequential")


def case_selection_options(suite_help: str):
    """The flags that select cases, shared by `run` and `estimate` so both take the same cases:
    --suite (its help says that command's default), --workload, --workload-opt, --scenario,
    --micro-batch, --accum-steps, --amp, --set-to-none/--zero-grads and --loss-norm."""
    from accumbench.hf_configs import hf_help

    options = [
        click.option("--suite", default=None, help=suite_help),
        click.option("--workload", "workload_spec", default=None,
                     help="Built-in (gpt, convnet-bn, convnet-gn, mlp, two-models, shared-trunk), hf:<model>, or a "
                          "plug-in path/to/file.py:factory or package.module:factory. Defines the cases from "
                          "flags instead of a suite (not with --suite). " + hf_help()),
        click.option("--workload-opt", "workload_opts", multiple=True, metavar="KEY=VALUE",
                     help="Option for the workload factory, repeatable, e.g. size=small, seq_len=256, padded=true. "
                          "With --workload only (an error with a suite)."),
        click.option("--scenario", "scenarios", multiple=True, type=click.Choice(SCENARIO_NAMES),
                     help="Repeatable. With --workload: the scenarios to run (default: large-batch and "
                          "accumulated, or both multi-task ones). With a suite: keep only these."),
        click.option("--micro-batch", default="4,8,16", show_default=True,
                     help="Comma-separated micro-batch sizes. With --workload only: a suite defines its own "
                          "(an error with a suite)."),
        click.option("--accum-steps", default="1,2,4", show_default=True,
                     help="Comma-separated accumulation steps. With --workload only (an error with a suite)."),
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
        return lever_options()(command)

    return decorate


LEVERS_META_KEY = "accumbench.levers"


def _keep_lever(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # The lever flags reach the commands through the context, not as parameters, so adding a
    # lever never changes a command's signature (`lever_settings` reads them back).
    if value is not None and value != ():
        ctx.meta.setdefault(LEVERS_META_KEY, {})[param.name] = value
    return value


def lever_options():
    """The levers beside accumulation (accumbench.levers), shared by run, estimate, plan and
    check: --checkpoint, --freeze, --trainable, --lora, --compile. Read with `lever_settings()`."""
    options = [
        click.option("--checkpoint", default=None, metavar="none|blocks|PATTERN", expose_value=False,
                     callback=_keep_lever,
                     help="Activation checkpointing (non-reentrant, RNG preserved): 'blocks' = the built-in's "
                          "transformer blocks / conv stages, or a pattern of module names or classes, "
                          "e.g. 'blocks.*' or 'DecoderLayer|Block' (globs separated by |)."),
        click.option("--freeze", default=None, metavar="PATTERN", expose_value=False, callback=_keep_lever,
                     help="Freeze the parameters matching PATTERN (their names or their modules' names/classes), "
                          "e.g. 'wte|wpe|blocks.0'; the optimizer holds the trainable ones only."),
        click.option("--trainable", default=None, metavar="PATTERN", expose_value=False, callback=_keep_lever,
                     help="Train only the parameters matching PATTERN (all others frozen), e.g. 'lm_head|ln_f'."),
        click.option("--lora", default=None, metavar="r=N,targets=PATTERN[,alpha=A][,dropout=P]",
                     expose_value=False, callback=_keep_lever,
                     help="LoRA adapters on the nn.Linear (and transformers Conv1D) layers matching targets "
                          "(plain PyTorch); every other parameter frozen unless --trainable names it, "
                          "e.g. r=8,targets='qkv|proj'."),
        click.option("--compile/--no-compile", "compile", default=None, expose_value=False, callback=_keep_lever,
                     help="torch.compile the model (default backend). Compile time is recorded apart "
                          "(compile_time_s), never in step times. Not with estimate (it says why)."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def lever_settings() -> dict[str, Any]:
    """The lever flags given on the command line (only those given), checked: exit 2 with one
    line for a bad value. Used by `select_cases`, `plan` and `check`."""
    from accumbench.levers import LeverError, Levers

    settings = dict(click.get_current_context().meta.get(LEVERS_META_KEY, {}))
    try:
        Levers(**settings)
    except LeverError as exc:
        fail_input(str(exc))
    return settings


def fail_input(message: str) -> NoReturn:
    """Print one clear line and exit 2 (usage or input error)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


class FiniteFloatRange(click.FloatRange):
    """`click.FloatRange` that also refuses NaN and infinity (exit 2, as an out-of-range value).

    FloatRange compares the value with its bounds, and every comparison with NaN is False, so
    it lets 'nan' through (and 'inf' where there is no upper bound); no option of these
    commands means anything by them."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The float, checked against the range and for being finite."""
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class SeedType(click.ParamType):
    """An integer seed that torch accepts: `torch.manual_seed` and `torch.Generator.manual_seed`
    take -2**63 .. 2**64 - 1 and raise "Overflow when unpacking long long" beyond, which would
    only show up once a case runs (an error record); refused here instead (exit 2)."""

    name = "integer"
    LOW, HIGH = -(2**63), 2**64 - 1

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """The seed as an int, within 64 bits."""
        number = click.INT.convert(value, param, ctx)
        if not self.LOW <= number <= self.HIGH:
            self.fail(f"{number} does not fit in 64 bits (a seed is from -2**63 to 2**64 - 1).", param, ctx)
        return number


SEED = SeedType()


def int_list(text: str, flag: str) -> list[int]:
    """Parse '8,16,32' into [8, 16, 32]; exit 2 with a message on anything else, including a
    value above the flag's bound (`accumbench.cases.MAX_MICRO_BATCH`, `MAX_ACCUM_STEPS`)."""
    from accumbench.cases import MAX_ACCUM_STEPS, MAX_MICRO_BATCH

    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail_input(f"{flag} takes comma-separated positive integers, got {text!r}")
    if not values or any(v < 1 for v in values):
        fail_input(f"{flag} takes comma-separated positive integers, got {text!r}")
    # Without a bound, --accum-steps 99999999999999999999 makes a case that loops (or allocates
    # host batches) forever; the bounds and why they are enough are in accumbench.cases.
    limit = {"--micro-batch": MAX_MICRO_BATCH, "--accum-steps": MAX_ACCUM_STEPS}.get(flag)
    if limit is not None and max(values) > limit:
        fail_input(f"{flag} {max(values)} is too large (at most {limit:,})")
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


def suite_rules(overrides: str) -> str:
    """What a suite keeps and what the command's flags change (`overrides`: the flags that
    override the suite's values, which differ between run and estimate)."""
    return (f"With a suite, --scenario keeps only those scenarios and {overrides} override the suite's values; "
            "--workload, --workload-opt, --micro-batch and --accum-steps define cases and are refused.")


def given_on_command_line(*names: str) -> set[str]:
    """Which of the current command's parameters the user gave (not left at their default)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {n for n in names if ctx.get_parameter_source(n) not in (ParameterSource.DEFAULT, None)}


def check_suite_flags(suite: str | None, workload: str | None, given: set[str]) -> None:
    """Exit 2 when case-defining flags come with a suite (they would be silently ignored)."""
    if suite is not None and workload is not None:
        fail_input("--suite and --workload exclude each other: --workload defines the cases itself")
    if workload is None:
        flags = [flag for name, flag in (("workload_opts", "--workload-opt"), ("micro_batch", "--micro-batch"),
                                         ("accum_steps", "--accum-steps")) if name in given]
        if flags:
            fail_input(f"{', '.join(flags)} define(s) cases with --workload and cannot change a suite "
                       f"({suite or 'the default suite'}); pass --workload, or drop the flag")


def select_cases(*, suite, workload, options, scenarios, micro_batches, accum_steps, amp, set_to_none,
                 loss_norm, warmup, steps):
    """The cases a command's flags select: from --workload and the grid flags, or from a suite
    (filtered by --scenario, knobs overridden by the flags that were given; see `suite_rules`)."""
    from accumbench.cases import SuiteError, expand_group, load_suite, override
    from accumbench.workloads import WorkloadError, load_workload

    check_suite_flags(suite, workload, given_on_command_line("workload_opts", "micro_batch", "accum_steps"))
    knobs = {"amp": amp, "set_to_none": set_to_none, "loss_norm": loss_norm, "warmup": warmup, "steps": steps,
             **lever_settings()}
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
            unique = list(dict.fromkeys(cases))  # two groups, or a knob the flags overrode, can repeat a case
            if len(unique) < len(cases):
                click.echo(f"note: {len(cases) - len(unique)} case(s) of the suite repeat another (after the flags' "
                           "overrides); each is measured once", err=True)
            cases = unique
    except SuiteError as exc:
        fail_input(str(exc))
    return cases


def validate_cases(runner, cases, suite: str | None = None) -> None:
    """Load every workload and check every scenario fits it before measuring anything; exit 2
    with the first problem (naming the `suite` and the case, when the cases come from one).
    A lever pattern's alternative that matches nothing is a warning, said once."""
    from accumbench.scenarios import check_compatible
    from accumbench.workloads import WorkloadError, load_workload

    if not cases:
        fail_input(f"{suite}: no cases selected (its groups, filtered by the flags, make none)" if suite
                   else "no cases selected")
    from accumbench.levers import Levers, check_levers

    from accumbench.runner import default_optimizer_label

    checked: set[tuple] = set()  # a suite repeats one workload and levers over many cases
    for case in cases:
        try:
            workload = runner.workload(case)
            default_optimizer_label(workload)  # case ids name the optimizer: a factory that fails stops here
            check_compatible(case.scenario, workload, case.loss_norm)
            key = (case.workload, case.options, Levers.of(case))
            if Levers.of(case).active and key not in checked:
                checked.add(key)
                for warning in check_levers(load_workload(case.workload, case.options_dict), Levers.of(case)):
                    click.echo(f"warning: {warning}", err=True)
            if case.compile and runner.meter.name == "estimate":
                from accumbench.levers import ESTIMATE_REFUSES_COMPILE

                fail_input(ESTIMATE_REFUSES_COMPILE)
        except (WorkloadError, ValueError) as exc:  # LeverError too: check_levers' failed builds
            fail_input(f"{suite}: case {case.label()}: {exc}" if suite else str(exc))


def open_results(out_path: Path, command: str, *, resume: bool = False, overwrite: bool = False,
                 append: bool = False, allowed: tuple[str, ...] = ("--resume", "--overwrite")):
    """The command's `ResultsFile`, checked before anything is measured: contradicting flags,
    an existing file without --resume/--overwrite, a folder that cannot hold it -> exit 2."""
    from accumbench.results_file import ResultsFile

    results = ResultsFile(out_path, resume=resume, overwrite=overwrite, append=append,
                          command=command, allowed=allowed)
    problem = results.problem()
    if problem:
        fail_input(problem)
    return results
