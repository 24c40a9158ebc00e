"""`accumbench compare` and `accumbench baseline`: the regression gate's command line.

Parses arguments and calls `accumbench.compare`; nothing else. Heavy imports stay inside the
commands because `accumbench --help` imports every command module.
"""

from __future__ import annotations

import os
import re
import sys

import click

from accumbench.cli.common import FiniteFloatRange

EXIT_OK, EXIT_REGRESSION, EXIT_INPUT = 0, 1, 2


class InputError(click.ClickException):
    """A usage or input problem (unreadable file, mismatched devices): exit status 2, said as
    every command says one (`common.fail_input`: "error: ...")."""

    exit_code = EXIT_INPUT

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def _memory_tolerance(ctx: click.Context, param: click.Parameter, value: str):
    """--memory-tolerance as a `MemoryCheck`; a bad or ambiguous value is a usage error (exit 2)."""
    from accumbench.gate.checks import MemoryCheck

    try:
        return MemoryCheck.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _throughput_check(text: str, alpha: float, gated: bool):
    """--throughput-tolerance as a `ThroughputCheck`, or click.BadParameter naming that option
    with the forms it takes (a percentage; the shared tolerance parser would suggest bytes)."""
    from accumbench.compare import ThroughputCheck

    hint = "use a percentage like '10%' or 'STAT:10%' with STAT median, mean or min"
    raw = str(text).strip()
    amount = raw.rpartition(":")[2].strip()
    if amount.startswith("-"):
        raise click.BadParameter(f"{raw!r} is negative: the tolerance is how much slower a step may get; {hint}",
                                 param_hint="'--throughput-tolerance'")
    if not re.fullmatch(r"(?:\d+(?:\.\d*)?|\.\d+)\s*%", amount):
        raise click.BadParameter(f"cannot read {raw!r}: {hint}", param_hint="'--throughput-tolerance'")
    try:
        return ThroughputCheck.parse(raw, alpha=alpha, gated=gated)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--throughput-tolerance'") from None


def _interactive() -> bool:
    """True when a person can answer a prompt (stdin is a terminal)."""
    return sys.stdin.isatty()


def _read(path: str, side: str):
    """Records of one results file, or exit 2 with the file and line that is wrong."""
    from accumbench.records import RecordError, read_records

    try:
        records = read_records(path)
    except RecordError as exc:
        raise InputError(f"cannot read the {side} results: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot read the {side} results {path}: {exc.strerror or exc}") from None
    if not records:
        raise InputError(f"the {side} results {path} hold no records")
    return records


@click.command(short_help="Compare results with a baseline; exit 1 on a regression.")
@click.argument("baseline", metavar="BASELINE")
@click.argument("current", metavar="CURRENT")
@click.option("--memory-tolerance", "memory_check", default="0.5%", show_default=True,
              callback=_memory_tolerance,
              help="How much a case's peak_allocated may grow: a percentage of the baseline or "
                   "whole bytes ('0', '4096', '64KiB'); a bare '0.5' is refused as ambiguous.")
@click.option("--throughput-tolerance", default="10%", show_default=True,
              help="How much the step time may slow down before a significant change counts: "
                   "'10%' or 'STAT:10%' with STAT median (default), mean or min.")
@click.option("--alpha", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=0.002,
              show_default=True,
              help="Significance level of the two-sided Mann-Whitney U test on step times.")
@click.option("--throughput-gate/--no-throughput-gate", default=True, show_default=True,
              help="With --no-throughput-gate throughput is compared and reported but never fails "
                   "the run (CI runners differ from the machine that made the baseline).")
@click.option("--allow-device-mismatch", is_flag=True,
              help="Compare even when meters, devices or torch versions differ.")
@click.option("--fail-on-missing", is_flag=True,
              help="Fail (exit 1) when a baseline case is missing from the current results.")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print Markdown (for a PR comment); not with --json.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for tools); not with --markdown.")
@click.option("--summary-file", envvar="GITHUB_STEP_SUMMARY", type=click.Path(dir_okay=False),
              show_envvar=True,
              help="Append the Markdown report to this file (default: $GITHUB_STEP_SUMMARY when set).")
def compare(baseline, current, memory_check, throughput_tolerance, alpha, throughput_gate,
            allow_device_mismatch, fail_on_missing, as_markdown, as_json, summary_file):
    """Compare CURRENT results with BASELINE results; exit 1 on a regression.

    Cases are matched by case_id (and world_size). For each case the table shows peak memory
    and throughput (samples/s) on both sides and the change.

    \b
    - Memory regresses when peak_allocated grows by more than --memory-tolerance.
    - Throughput regresses only when the step times differ significantly (two-sided
      Mann-Whitney U, p < --alpha) AND the median step time grew by more than
      --throughput-tolerance AND by more than the runs' own scatter (IQR/median).
    - Records of `accumbench check` regress when gradient equivalence gets worse;
      DDP records when gradient all-reduces per optimizer step grow.
    - A case that was ok and now runs out of memory (or fails) regresses too.
      Improvements are shown; cases on one side only are listed.
    - Results from different meters, devices or torch versions are refused (exit 2)
      unless --allow-device-mismatch.

    \b
    Example (the CPU self-gate in CI):
      accumbench compare results/baseline-cpu.jsonl smoke.jsonl --no-throughput-gate
    Example (a GPU gate, Markdown for a PR comment):
      accumbench compare results/baseline-h100.jsonl run.jsonl --markdown > comment.md

    Exit codes: 0 no regression, 1 regression, 2 usage or input error.
    """
    from accumbench.compare import (
        MismatchError,
        compare_results,
        render_json,
        render_markdown,
        render_text,
    )

    if as_markdown and as_json:  # one output format: the other would be silently dropped
        raise click.UsageError("--markdown and --json exclude each other: give one")
    fmt = "markdown" if as_markdown else "json" if as_json else None
    throughput_check = _throughput_check(throughput_tolerance, alpha, throughput_gate)
    base_records = _read(baseline, "baseline")
    cur_records = _read(current, "current")
    try:
        comparison = compare_results(
            base_records, cur_records, memory_check, throughput_check,
            allow_device_mismatch=allow_device_mismatch, fail_on_missing=fail_on_missing,
            baseline_source=baseline, current_source=current,
        )
    except MismatchError as exc:
        raise InputError(str(exc)) from None
    if not comparison.cases:
        # Nothing was compared, so nothing could regress: a PASS would gate nothing (usually
        # the wrong file or a renamed suite).
        raise InputError(
            f"no case in common: {baseline} has {len(comparison.only_baseline)} case(s), {current} has "
            f"{len(comparison.only_current)}, and no case_id (with world_size) appears in both"
        )

    renderer = {"markdown": render_markdown, "json": render_json}.get(fmt, render_text)
    click.echo(renderer(comparison), nl=False)
    if summary_file:
        try:
            with open(summary_file, "a", encoding="utf-8") as fh:
                fh.write(render_markdown(comparison) + "\n")
        except OSError as exc:
            # The summary is a convenience: failing to write it must not hide the verdict.
            click.echo(f"warning: could not append to {summary_file}: {exc.strerror or exc}", err=True)
    sys.exit(comparison.exit_code)


@click.group(short_help="Accept a new baseline (never overwrites silently).")
def baseline():
    """Manage baseline results files: the reference `accumbench compare` gates against.

    \b
    Accept a new baseline after an intended change (shows what changes, asks first):
      accumbench run --suite smoke --device cpu --out smoke.jsonl
      accumbench baseline update results/baseline-cpu.jsonl smoke.jsonl
      git add results/baseline-cpu.jsonl && git commit -m "Accept new CPU baseline: <why>"
    """


@baseline.command("update")
@click.argument("baseline_path", metavar="BASELINE")
@click.argument("results", nargs=-1, required=True, metavar="RESULTS...")
@click.option("--merge", is_flag=True,
              help="Keep baseline cases that RESULTS do not measure (re-baseline a few cases).")
@click.option("--yes", "-y", is_flag=True, help="Overwrite an existing baseline without asking.")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
def baseline_update(baseline_path, results, merge, yes, dry_run):
    """Make RESULTS the new BASELINE, showing what changes first.

    Same argument order as `accumbench compare BASELINE CURRENT`: after a compare fails
    because of an intended change, `accumbench baseline update BASELINE CURRENT` accepts it.
    A new file is written directly. An existing one is replaced only after you confirm at the
    terminal or pass --yes; without a terminal and without --yes it is refused (exit 2), so
    a script never overwrites a baseline silently. Every case of RESULTS must come from one
    meter, device and torch version.

    \b
    Example:
      accumbench baseline update results/baseline-cpu.jsonl smoke.jsonl --dry-run
      accumbench baseline update results/baseline-cpu.jsonl smoke.jsonl --yes

    Exit codes: 0 written (or nothing to do), 1 declined at the prompt, 2 usage or input error.
    """
    from accumbench.compare import BaselineError, plan_update, write_baseline
    from accumbench.records import RecordError, read_records

    new = []
    for path in results:
        new.extend(_read(path, "new"))
    old = None
    if os.path.exists(baseline_path):
        try:
            old = read_records(baseline_path)
        except RecordError as exc:
            raise InputError(
                f"the existing baseline is unreadable ({exc}); remove it first if you mean to replace it"
            ) from None
    try:
        plan = plan_update(new, old, merge=merge)
    except BaselineError as exc:
        raise InputError(str(exc)) from None

    action = "replace" if plan.overwrites else "create"
    click.echo(f"{action} {baseline_path}: {plan.summary()}")
    if dry_run:
        click.echo("dry run: nothing written")
        return
    if plan.overwrites and not yes:
        if not _interactive():
            raise InputError(f"refusing to overwrite {baseline_path} without confirmation: pass --yes")
        if not click.confirm(f"Overwrite {baseline_path}?", default=False):
            click.echo("nothing written")
            sys.exit(EXIT_REGRESSION)
    try:
        write_baseline(baseline_path, plan)
    except BaselineError as exc:
        raise InputError(str(exc)) from None
    click.echo(f"wrote {len(plan.records)} case(s) to {baseline_path}; commit it with the change that explains it")
