"""`accumbench compare` and `accumbench baseline update` through click's CliRunner.

Exact output is pinned by golden files in tests/golden/ (regenerate after an intended change
with `ACCUMBENCH_REGEN_GOLDEN=1 pytest tests/test_cli_compare.py`, then review the diff).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.records import read_records, write_records
from gate_helpers import record

GOLDEN = Path(__file__).parent / "golden"
QUICK = [0.0100, 0.0102, 0.0098, 0.0101, 0.0099, 0.0100, 0.0103, 0.0097, 0.0100, 0.0101]
SLOW = [t * 1.5 for t in QUICK]


def _baseline():
    return [
        record("gpt-tiny/accumulated/mb2/acc4", 4_000_000, QUICK),
        record("gpt-tiny/large-batch/mb8/acc1", 9_000_000, QUICK),
        record("mlp-small/accumulated/mb8/acc4", 2_000_000, QUICK),
        record("mlp-small/large-batch/mb32/acc1", 3_000_000, QUICK),
        record("convnet-bn/large-batch/mb64/acc1", None, (), status="oom", error="OutOfMemoryError: out of memory"),
        record("removed/case", 1_000, QUICK),
    ]


def _current():
    return [
        record("gpt-tiny/accumulated/mb2/acc4", 4_000_000, QUICK),                # same
        record("gpt-tiny/large-batch/mb8/acc1", 9_131_072, QUICK),                # +1.46% memory
        record("mlp-small/accumulated/mb8/acc4", 2_000_000, SLOW),                # 50% slower
        record("mlp-small/large-batch/mb32/acc1", None, (), status="oom",
               error="OutOfMemoryError: out of memory"),                          # ok -> oom
        record("convnet-bn/large-batch/mb64/acc1", 7_000_000, QUICK),             # oom -> ok
        record("added/case", 1_000, QUICK),
    ]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """base.jsonl / cur.jsonl in the working directory (so paths in the output are short)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    write_records("base.jsonl", _baseline())
    write_records("cur.jsonl", _current())
    return tmp_path


def invoke(*args: str, **kwargs):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kwargs)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("ACCUMBENCH_REGEN_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_identical_results_pass(files):
    result = invoke("compare", "base.jsonl", "base.jsonl")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == (
        "PASS: no regression in 6 compared case(s) (0 improved, 6 ok, 0 slower but not gated; "
        "0 only in baseline, 0 only in current)"
    )


def test_regressions_text_golden(files):
    result = invoke("compare", "base.jsonl", "cur.jsonl")
    assert result.exit_code == 1
    check_golden("compare.txt", result.stdout)


def test_regressions_markdown_golden(files):
    result = invoke("compare", "base.jsonl", "cur.jsonl", "--markdown")
    assert result.exit_code == 1
    check_golden("compare.md", result.stdout)


def test_json_output(files):
    result = invoke("compare", "base.jsonl", "cur.jsonl", "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    check_golden("compare.json", result.stdout)
    assert data["passed"] is False and data["exit_code"] == 1
    verdicts = {c["key"]: c["verdict"] for c in data["cases"]}
    assert verdicts == {
        "gpt-tiny/accumulated/mb2/acc4": "same",
        "gpt-tiny/large-batch/mb8/acc1": "regression",
        "mlp-small/accumulated/mb8/acc4": "regression",
        "mlp-small/large-batch/mb32/acc1": "regression",
        "convnet-bn/large-batch/mb64/acc1": "improvement",
    }
    assert data["only_baseline"] == ["removed/case"] and data["only_current"] == ["added/case"]


def test_no_throughput_gate_reports_slowdown_without_failing_on_it(files):
    write_records("cur.jsonl", [record("mlp-small/accumulated/mb8/acc4", 2_000_000, SLOW)])
    result = invoke("compare", "base.jsonl", "cur.jsonl", "--no-throughput-gate")
    assert result.exit_code == 0, result.output
    assert "slower (not gated)" in result.stdout
    assert "reported only, never fails (a case is flagged when its median step time grows by more than 10%" in result.stdout
    assert invoke("compare", "base.jsonl", "cur.jsonl").exit_code == 1


def test_too_few_step_times_are_reported_not_tested(files):
    write_records("few.jsonl", [record("a", times=QUICK[:5])])
    write_records("few_slow.jsonl", [record("a", times=SLOW[:5])])
    result = invoke("compare", "few.jsonl", "few_slow.jsonl")
    assert result.exit_code == 0
    assert "too few  ok" in result.stdout
    assert ("Throughput not tested (1): fewer than 7 step times on a side cannot reach p < 0.002 "
            "(measure more steps: accumbench run --steps N)") in result.stdout


def test_tolerances_are_options(files):
    assert invoke("compare", "base.jsonl", "cur.jsonl", "--memory-tolerance", "2%",
                  "--throughput-tolerance", "60%", "--no-throughput-gate").exit_code == 1  # still the OOM
    write_records("cur.jsonl", [record("gpt-tiny/large-batch/mb8/acc1", 9_131_072, QUICK)])
    assert invoke("compare", "base.jsonl", "cur.jsonl").exit_code == 1
    assert invoke("compare", "base.jsonl", "cur.jsonl", "--memory-tolerance", "2%").exit_code == 0
    assert invoke("compare", "base.jsonl", "cur.jsonl", "--memory-tolerance", "128KiB").exit_code == 0
    assert invoke("compare", "base.jsonl", "cur.jsonl", "--memory-tolerance", "0").exit_code == 1


def test_fail_on_missing(files):
    write_records("cur.jsonl", _baseline()[:2])
    assert invoke("compare", "base.jsonl", "cur.jsonl").exit_code == 0
    result = invoke("compare", "base.jsonl", "cur.jsonl", "--fail-on-missing")
    assert result.exit_code == 1
    assert "Only in baseline (missing from current, fails the gate) (4):" in result.stdout


def test_step_summary_is_appended(files, monkeypatch):
    summary = files / "summary.md"
    summary.write_text("# earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    invoke("compare", "base.jsonl", "cur.jsonl")
    invoke("compare", "base.jsonl", "base.jsonl")
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("# earlier step\n### ❌ accumbench compare: 3 regressions\n")
    assert "### ✅ accumbench compare: no regression" in text


def test_device_mismatch_exits_2(files):
    write_records("cur.jsonl", [record("gpt-tiny/accumulated/mb2/acc4", meter="cuda", device_name="NVIDIA H100")])
    result = invoke("compare", "base.jsonl", "cur.jsonl")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: refusing to compare results measured on different devices, meters or torch versions:\n"
        "  meter: baseline 'cpu' vs current 'cuda' (1 case(s))\n"
        "  device_name: baseline 'cpu (x86_64, 2 threads)' vs current 'NVIDIA H100' (1 case(s))\n"
    )
    assert result.stdout == ""
    assert invoke("compare", "base.jsonl", "cur.jsonl", "--allow-device-mismatch").exit_code == 0


def test_corrupt_baseline_exits_2_naming_file_and_line(files):
    lines = Path("base.jsonl").read_text().splitlines()
    Path("base.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2] + "\n")
    result = invoke("compare", "base.jsonl", "cur.jsonl")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot read the baseline results: base.jsonl:2: not valid JSON")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"name": "test_x", "stats": {}}\n', "base.jsonl:1: no integer 'schema' field: not an accumbench record"),
        ("", "the baseline results base.jsonl hold no records"),
        ('{"schema": 99}\n', "base.jsonl:1: schema 99 is newer than this accumbench understands"),
    ],
)
def test_foreign_or_empty_baseline_exits_2(files, content, message):
    Path("base.jsonl").write_text(content)
    result = invoke("compare", "base.jsonl", "cur.jsonl")
    assert result.exit_code == 2
    assert message in result.stderr


def test_missing_file_exits_2(files):
    result = invoke("compare", "nope.jsonl", "cur.jsonl")
    assert result.exit_code == 2
    assert "error: cannot read the baseline results: nope.jsonl: no such file" in result.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--memory-tolerance", "lots", "cannot read tolerance 'lots'"),
    ("--throughput-tolerance", "1MiB", "use a percentage like '10%'"),
    ("--alpha", "2", "not in the range"),
    # NaN passes click's FloatRange; before, the message named --throughput-tolerance.
    ("--alpha", "nan", "Invalid value for '--alpha': 'nan' is not a finite number"),
    ("--throughput-tolerance", "-10%", "'-10%' is negative"),
    ("--throughput-tolerance", "mean:-10%", "is negative"),
    # 0.5 read as bytes would be 0 bytes (rounded): surely 0.5% was meant.
    ("--memory-tolerance", "0.5", "'0.5' is ambiguous: give '0.5%' or a whole number of bytes"),
    ("--memory-tolerance", "1.5", "'1.5' is ambiguous: give '1.5%'"),
])
def test_bad_options_exit_2(files, option, value, message):
    result = invoke("compare", "base.jsonl", "cur.jsonl", option, value)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    if option == "--throughput-tolerance":  # a throughput tolerance is never bytes
        assert "bytes" not in result.stderr and "KiB" not in result.stderr, result.stderr


def test_whole_bytes_stay_a_memory_tolerance(files):
    for value in ("4096", "1e3", "64KiB", "0"):
        result = invoke("compare", "base.jsonl", "base.jsonl", "--memory-tolerance", value)
        assert result.exit_code == 0, (value, result.output)


def test_markdown_and_json_together_exit_2(files):
    result = invoke("compare", "base.jsonl", "cur.jsonl", "--markdown", "--json")
    assert result.exit_code == 2
    assert "--markdown and --json exclude each other" in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""


def test_help_lists_the_commands():
    result = invoke("--help")
    assert "compare" in result.output and "baseline" in result.output
    assert "Exit codes: 0 no regression, 1 regression, 2 usage or input error." in invoke("compare", "--help").output


# --- baseline update --------------------------------------------------------------------------

def test_baseline_update_creates_a_new_file(files):
    result = invoke("baseline", "update", "results/baseline.jsonl", "cur.jsonl")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("create results/baseline.jsonl: 6 case(s) in the new baseline: 6 added")
    assert [r.case_id for r in read_records("results/baseline.jsonl")] == [r.case_id for r in _current()]


def test_baseline_update_never_overwrites_silently(files):
    before = Path("base.jsonl").read_bytes()
    result = invoke("baseline", "update", "base.jsonl", "cur.jsonl")
    assert result.exit_code == 2
    assert "refusing to overwrite base.jsonl without confirmation: pass --yes" in result.stderr
    # The plan was shown: what would be dropped, added and changed.
    assert "  dropped: removed/case" in result.stdout
    assert "  added:   added/case" in result.stdout
    assert "  peak:    gpt-tiny/large-batch/mb8/acc1: 9000000 -> 9131072 bytes, +131072 (+1.46%)" in result.stdout
    assert "  status:  mlp-small/large-batch/mb32/acc1: ok -> oom" in result.stdout
    assert Path("base.jsonl").read_bytes() == before

    assert invoke("baseline", "update", "base.jsonl", "cur.jsonl", "--dry-run").exit_code == 0
    assert Path("base.jsonl").read_bytes() == before

    result = invoke("baseline", "update", "base.jsonl", "cur.jsonl", "--yes")
    assert result.exit_code == 0, result.output
    assert Path("base.jsonl").read_bytes() == Path("cur.jsonl").read_bytes()
    assert invoke("compare", "base.jsonl", "cur.jsonl").exit_code == 0


def test_baseline_update_asks_at_a_terminal(files, monkeypatch):
    import accumbench.cli.compare as cli_compare

    monkeypatch.setattr(cli_compare, "_interactive", lambda: True)
    before = Path("base.jsonl").read_bytes()
    declined = invoke("baseline", "update", "base.jsonl", "cur.jsonl", input="n\n")
    assert declined.exit_code == 1
    assert "Overwrite base.jsonl? [y/N]: n\nnothing written" in declined.stdout
    assert Path("base.jsonl").read_bytes() == before
    accepted = invoke("baseline", "update", "base.jsonl", "cur.jsonl", input="y\n")
    assert accepted.exit_code == 0
    assert Path("base.jsonl").read_bytes() == Path("cur.jsonl").read_bytes()


def test_baseline_update_merge_keeps_unmeasured_cases(files):
    write_records("part.jsonl", [record("gpt-tiny/large-batch/mb8/acc1", 9_131_072, QUICK)])
    result = invoke("baseline", "update", "base.jsonl", "part.jsonl", "--merge", "--yes")
    assert result.exit_code == 0, result.output
    merged = {r.case_id: r.peak_allocated for r in read_records("base.jsonl")}
    assert len(merged) == 6
    assert merged["gpt-tiny/large-batch/mb8/acc1"] == 9_131_072
    assert merged["removed/case"] == 1_000


def test_baseline_update_refuses_mixed_setups(files):
    write_records("mixed.jsonl", [record("a"), record("b", meter="cuda", device_name="NVIDIA H100")])
    result = invoke("baseline", "update", "new.jsonl", "mixed.jsonl")
    assert result.exit_code == 2
    assert "a baseline holds one setup, these records come from 2" in result.stderr
    assert not Path("new.jsonl").exists()


def test_baseline_update_says_when_the_setup_changes(files):
    write_records("h100.jsonl", [record("gpt-tiny/accumulated/mb2/acc4", 4_000_000, QUICK, meter="cuda",
                                        device_name="NVIDIA H100")])
    result = invoke("baseline", "update", "base.jsonl", "h100.jsonl", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "note:    the baseline changes setup: meter=cpu device='cpu (x86_64, 2 threads)'" in result.output
    assert "-> meter=cuda device='NVIDIA H100'" in result.output
    same = invoke("baseline", "update", "base.jsonl", "cur.jsonl", "--dry-run")
    assert "changes setup" not in same.output


def test_baseline_update_with_unreadable_results_exits_2(files):
    Path("bad.jsonl").write_text("{not json\n")
    result = invoke("baseline", "update", "base.jsonl", "bad.jsonl", "--yes")
    assert result.exit_code == 2
    assert "bad.jsonl:1: not valid JSON" in result.stderr


def test_baseline_update_waits_for_a_writer_that_holds_the_file(files):
    # A run still appending to the file holds its lock: replacing the file under it would lose
    # every record the run writes after the rename.
    from accumbench.results_file import ResultsFile

    before = Path("base.jsonl").read_bytes()
    with ResultsFile("base.jsonl", resume=True, command="accumbench run") as running:
        running.lock()
        result = invoke("baseline", "update", "base.jsonl", "cur.jsonl", "--yes")
        assert result.exit_code == 2
        assert "base.jsonl is being written by pid" in result.stderr and "(accumbench run)" in result.stderr
        assert "--out" not in result.stderr  # a flag baseline does not have
        assert Path("base.jsonl").read_bytes() == before
    assert invoke("baseline", "update", "base.jsonl", "cur.jsonl", "--yes").exit_code == 0
    assert not Path("base.jsonl.lock").exists()


def test_baseline_update_to_an_unwritable_path_exits_2_in_one_line(files):
    Path("file").write_text("")
    result = invoke("baseline", "update", "file/baseline.jsonl", "cur.jsonl", "--yes")
    assert result.exit_code == 2, result.output
    assert "cannot write file/baseline.jsonl: file is a file, not a folder" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
