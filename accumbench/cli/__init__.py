"""The `accumbench` command line: a click group whose commands live one per module here.

Commands are loaded lazily from the literal registry below, so `accumbench report --help` does
not pay for importing torch. Each command module parses arguments and calls the library; no
library function takes a click context.
"""

from __future__ import annotations

import importlib

import click

from accumbench import __version__

# name -> "module:attribute"; a literal registry, not discovery.
COMMANDS: dict[str, str] = {
    "run": "accumbench.cli.run:run",
    "estimate": "accumbench.cli.estimate:estimate",
    "plan": "accumbench.cli.plan:plan",
    "check": "accumbench.cli.check:check",
    "report": "accumbench.cli.report:report",
    "compare": "accumbench.cli.compare:compare",
    "baseline": "accumbench.cli.compare:baseline",
}


class OneLineUsageError(click.UsageError):
    """A usage error shown as every input error of the commands is (`common.fail_input`): one
    line, exit 2, where click prints its usage, a hint and the message over four."""

    def __init__(self, message: str, ctx: click.Context | None = None, command_path: str | None = None) -> None:
        super().__init__(message, ctx)
        self.command_path = ctx.command_path if ctx is not None else command_path

    def show(self, file=None) -> None:
        where = f" (see '{self.command_path} --help')" if self.command_path else ""
        click.echo(f"error: {self.format_message().rstrip('.')}{where}", err=True, file=file)


def _one_line(exc: click.UsageError, command_path: str | None = None) -> OneLineUsageError:
    """`exc` as a `OneLineUsageError`; `command_path` names the command when click gave no context
    (an option's missing value is found before the command's context exists). A group run with
    no command stays as click raises it: its help, shown as help (exit 2)."""
    if isinstance(exc, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return exc
    return OneLineUsageError(exc.format_message(), exc.ctx, command_path)


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is asked for, and shows
    click's usage errors (unknown option, bad value, missing argument) in one line."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:  # the group's own arguments: an unknown command or option
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context):
        try:  # a command's arguments, parsed when the group invokes it, and its own usage errors
            return super().invoke(ctx)
        except click.UsageError as exc:
            command = " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
            raise _one_line(exc, command) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="accumbench")
def main() -> None:
    """Measure what gradient accumulation costs and saves, and gate it in CI.

    \b
    Typical session:
      accumbench run --suite smoke --out results/run.jsonl     # measure (CUDA when present)
      accumbench report results/run.jsonl --out report/         # figures + HTML + Markdown
      accumbench compare results/baseline.jsonl results/run.jsonl   # exit 1 on regression

    Exit codes: 0 ok, 1 regression or failed check, 2 usage or input error.
    """
