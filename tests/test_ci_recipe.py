"""The CI recipe (.github/workflows/accumbench.yml) uses only commands and flags that exist.

A workflow is only run on GitHub, so a renamed flag would break users' CI silently; this test
reads every `accumbench ...` command line in the file (joining backslash continuations) and
checks each option against the click command it calls.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest

from accumbench.cli import main

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "accumbench.yml"


def commands_in(text: str) -> list[list[str]]:
    """Every shell command in the file that starts with `accumbench`, as argv lists."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("run:").strip()
        if line.startswith("accumbench "):
            out.append(shlex.split(line.split(">")[0].split("||")[0]))
    return out


def resolve(argv: list[str]) -> click.Command:
    ctx = click.Context(main)
    command: click.Command = main
    for word in argv[1:]:
        if isinstance(command, click.Group) and not word.startswith("-"):
            command = command.get_command(ctx, word)
            assert command is not None, f"unknown command {word!r} in {' '.join(argv)}"
        else:
            break
    return command


def test_workflow_commands_use_existing_flags():
    commands = commands_in(WORKFLOW.read_text(encoding="utf-8"))
    names = {" ".join(argv[:2]) for argv in commands}
    assert {"accumbench run", "accumbench compare"} <= names
    for argv in commands:
        command = resolve(argv)
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        for word in argv:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"{word} is not an option of {' '.join(argv[:2])}"


@pytest.mark.parametrize("needle", [
    "accumbench compare results/baseline-cpu.jsonl results/current-cpu.jsonl",
    "--no-throughput-gate",
    "runs-on: [self-hosted, gpu]",
    "--index-url https://download.pytorch.org/whl/cpu",
])
def test_workflow_has_the_two_gates(needle):
    assert needle in " ".join(WORKFLOW.read_text(encoding="utf-8").replace("\\\n", " ").split())
