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


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is asked for."""

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
