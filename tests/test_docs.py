"""Every command is documented: in the README, and by a --help with an example."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from accumbench.cli import COMMANDS, main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_is_in_the_readme(name):
    assert f"accumbench {name}" in README


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_teaches_with_an_example(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"accumbench {name}" in result.output  # an example line


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_wrapped_example_keeps_its_backslash(name):
    """An example that goes on over two lines ends the first with a backslash, so it pastes into a
    shell as one command: a lone backslash in the docstring joins the lines instead (the second
    then shows as a run of spaces inside the first)."""
    lines = CliRunner().invoke(main, [name, "--help"]).output.splitlines()
    for line, after in zip(lines, lines[1:] + [""]):
        if line.strip().startswith("accumbench "):
            assert "  --" not in line.split("#")[0].strip(), line
            if after.startswith(" " * (len(line) - len(line.lstrip()) + 2)) and after.strip().startswith("--"):
                assert line.split("#")[0].rstrip().endswith("\\"), line


def test_top_level_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README and "python -m pytest -q" in ci
    assert "torch==2.13.0" in ci


def test_the_design_document_names_only_files_that_exist():
    import re

    root = Path(__file__).resolve().parent.parent
    design = (root / "docs" / "design.md").read_text()
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*(?:\.py|/))`", design))
    assert {"runner.py", "results_file.py", "session.py", "meters/"} <= named
    missing = [n for n in named if not ((root / "accumbench" / n).exists() or (root / n).exists())]
    assert not missing, f"docs/design.md names files that do not exist: {missing}"
    for path in [root / "README.md", *root.joinpath("accumbench").rglob("*.py")]:
        assert "DESIGN.md" not in path.read_text(), f"{path} cites DESIGN.md, which is not in the repository"
