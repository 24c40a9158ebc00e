"""The one byte formatter, size parser and text table (`accumbench.textfmt`) and the commands
that read sizes through them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.textfmt import format_bytes, parse_size, text_table


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1536, "1.50 KiB"), (1016 * 1024, "1016 KiB"),
    (23.4 * 2**20, "23.4 MiB"), (6174015488, "5.75 GiB"), (59.1 * 2**30, "59.1 GiB"), (4 * 2**30, "4.00 GiB"),
    (2048 * 2**40, "2048 TiB"), (-1536, "-1.50 KiB"), (None, "-"), (float("nan"), "-"),
])
def test_format_bytes_three_significant_figures_never_scientific(n, text):
    assert format_bytes(n) == text


def test_format_bytes_signed_and_missing_text():
    assert format_bytes(1536, signed=True) == "+1.50 KiB"
    assert format_bytes(-1536, signed=True) == "-1.50 KiB"
    assert format_bytes(0, signed=True) == "0 B"
    assert format_bytes(None, missing="—") == "—"


def test_every_command_formats_bytes_the_same_way():
    from accumbench.cli.common import format_bytes as cli_format
    from accumbench.gate.checks import format_bytes as gate_format
    from accumbench.plan import format_bytes as plan_format
    from accumbench.report.units import format_bytes as report_format

    for n in (512, 1016 * 1024, 23.4 * 2**20, 6174015488):
        assert cli_format(n) == gate_format(n) == plan_format(n) == report_format(n) == format_bytes(n)
    assert report_format(None) == "—"  # the report's dash for a missing value


@pytest.mark.parametrize("text, n", [
    ("24GiB", 24 * 2**30), ("24GB", 24 * 10**9), ("24 GiB", 24 * 2**30), ("24gib", 24 * 2**30),
    ("80e9", 80 * 10**9), ("512", 512), ("1.5 MiB", 1572864), ("0", 0), (" 64KiB ", 65536), ("2TB", 2 * 10**12),
])
def test_parse_size_accepts_binary_decimal_scientific_and_plain_bytes(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text, message", [
    ("1e400", "too large"), ("1e19", "too large"), ("99999999999999999999GiB", "too large"),
    ("-1", "negative"), ("-24GiB", "negative"), ("nan", "not a size"), ("inf", "not a size"),
    ("24 parsecs", "not a size"), ("", "not a size"), ("GiB", "not a size"),
])
def test_parse_size_rejects_overflow_nan_inf_negative_and_junk(text, message):
    with pytest.raises(ValueError, match=message):
        parse_size(text)


def test_memory_tolerance_reads_sizes_like_every_command():
    from accumbench.gate.checks import Tolerance

    assert Tolerance.parse("64KiB").amount == 65536 and Tolerance.parse("1e6").amount == 1e6
    assert Tolerance.parse("1 GB").amount == 1e9 and Tolerance.parse("0.5%").relative
    for bad in ("-5", "1e400", "lots"):
        with pytest.raises(ValueError, match="cannot read tolerance"):
            Tolerance.parse(bad)


@pytest.mark.parametrize("args, flag", [
    (["plan", "--effective-batch", "8", "--workload", "mlp", "--memory-budget", "1e400"], "--memory-budget"),
    (["plan", "--effective-batch", "8", "--workload", "mlp", "--memory-budget", "-24GiB"], "--memory-budget"),
    (["plan", "--effective-batch", "8", "--workload", "mlp", "--memory-budget", "nan"], "--memory-budget"),
    (["estimate", "--device-kind", "h100", "--workload", "mlp", "--assume", "total_memory_bytes=1e400"],
     "total_memory_bytes"),
    (["estimate", "--device-kind", "h100", "--workload", "mlp", "--assume", "reserve_bytes=-1GiB"], "reserve_bytes"),
])
def test_commands_reject_impossible_sizes_with_one_line_and_exit_2(args, flag):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "size" in lines[0], result.stderr


def test_estimate_and_plan_accept_the_same_size_forms():
    from accumbench.estimate_assumptions import assumptions_for

    for text in ("24GiB", "24GB", "24 GiB", "80e9", "1000000"):
        # reserve 0: a total at or below the 1 GiB reserve is refused (nothing usable)
        overrides = {"total_memory_bytes": text, "reserve_bytes": "0"}
        assert assumptions_for("h100", overrides).total_memory_bytes == parse_size(text)


def test_text_table_aligns_columns_and_never_truncates_or_marks_up():
    long_id = "gpt-gpt2/accumulated/mb8/acc32/amp-bf16/set_to_none/norm-mean/AdamW(foreach)/[bold]x" * 3
    text = text_table(("case", "peak", "p"), [(long_id, "5.75 GiB", 1), ("short", "1016 KiB", None)], right=(1, 2))
    lines = text.split("\n")
    assert lines[0].startswith("case ") and lines[0].endswith("peak  p")
    assert set(lines[1]) == {"-", " "}
    assert lines[2] == f"{long_id}  5.75 GiB  1"  # the whole id, markup left as text
    assert lines[3] == "short".ljust(len(long_id)) + "  1016 KiB  -"  # right-aligned numbers, '-' for None
    assert all(line == line.rstrip() for line in lines) and not text.endswith("\n")


def test_text_table_has_no_ansi_codes_even_when_a_terminal_is_forced(monkeypatch):
    # A CI log or a pipe must get plain text; rich honours FORCE_COLOR/TTY_COMPATIBLE otherwise.
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    text = text_table(("a", "b"), [("x", "1")])
    assert "\x1b" not in text and text == "a  b\n-- -\nx  1"


def test_compare_table_has_no_ansi_codes_in_a_pipe(tmp_path):
    from accumbench.records import write_records
    from gate_helpers import record

    write_records(tmp_path / "a.jsonl", [record("x/1"), record("x/2", peak=2_000_000)])
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl")],
                                color=False)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "x/1" in result.stdout and "1.91 MiB" in result.stdout


def test_one_reader_of_boolean_words():
    from accumbench.textfmt import parse_bool

    assert [parse_bool(w) for w in ("true", " Yes", "ON", "1")] == [True] * 4
    assert [parse_bool(w) for w in ("False", "no ", "off", "0")] == [False] * 4
    assert [parse_bool(w) for w in ("maybe", "", "2", "truee")] == [None] * 4


def test_a_fractional_bare_number_is_not_a_byte_count():
    from accumbench.textfmt import is_fractional_bare_number

    assert all(is_fractional_bare_number(t) for t in ("0.5", " 2.5 ", "1e-3", ".5", "-0.5"))
    assert not any(is_fractional_bare_number(t) for t in ("0", "4096", "1e6", "1e400", "0.5%", "1.5GB", "lots"))


def test_is_integer_takes_ints_but_not_the_bools_json_and_toml_make():
    from accumbench.textfmt import is_integer

    assert [is_integer(v) for v in (0, -3, 2**70, True, False, 1.0, "1", None)] == [
        True, True, True, False, False, False, False, False]
