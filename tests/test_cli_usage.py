"""Click's own usage errors read as every input error of the commands: one line, exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from accumbench.cli import main


@pytest.mark.parametrize("args, message, command", [
    (["plan", "--bogus"], "No such option '--bogus'", "accumbench plan"),
    (["run", "--micro-batch"], "Option '--micro-batch' requires an argument", "accumbench run"),
    (["plan", "--effective-batch", "x", "--memory-budget", "1GiB"],
     "Invalid value for '--effective-batch': 'x' is not a valid integer", "accumbench plan"),
    (["report"], "Missing argument 'RESULTS...'", "accumbench report"),
    (["estimate", "--device-kind", "tpu"], "Invalid value for '--device-kind'", "accumbench estimate"),
    (["bogus"], "No such command 'bogus'", "accumbench"),
])
def test_a_usage_error_is_one_line_naming_the_help_to_read(args, message, command):
    result = CliRunner().invoke(main, args, prog_name="accumbench")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {message}") and lines[0].endswith(f"(see '{command} --help')"), lines[0]


def test_a_bad_value_the_command_checks_itself_is_still_one_line():
    result = CliRunner().invoke(main, ["run", "--micro-batch", "x"], prog_name="accumbench")
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: --micro-batch")


@pytest.mark.parametrize("args", [[], ["baseline"]])
def test_a_group_with_no_command_shows_its_help_not_an_error(args):
    result = CliRunner().invoke(main, args, prog_name="accumbench")
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: accumbench") and "error:" not in result.stderr
    assert "Commands:" in result.stderr
