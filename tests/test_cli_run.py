"""`accumbench run` end to end through click's CliRunner, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.records import read_records

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_plugin_workload_runs_every_scenario_it_supports(tmp_path, plugin_path):
    out = tmp_path / "single.jsonl"
    result = invoke("run", "--device", "cpu", "--workload", f"{plugin_path}:single", "--micro-batch", "2,4",
                    "--accum-steps", "1,2", "--steps", "2", "--warmup", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert {r.scenario for r in records} == {"large-batch", "accumulated"}
    assert all(r.status == "ok" and r.workload == "plugin-mlp" for r in records)

    out = tmp_path / "multi.jsonl"
    result = invoke("run", "--device", "cpu", "--workload", f"{plugin_path}:multitask", "--micro-batch", "2",
                    "--accum-steps", "1,2", "--steps", "1", "--warmup", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert {r.scenario for r in records} == {"multitask-combined", "multitask-sequential"}
    assert all(r.status == "ok" and r.tasks == ("a", "b") for r in records)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workload", "missing.py:build"], "error: workload file not found: missing.py"),
        (["--workload", "{plugin}:raises"], "raised RuntimeError: boom in factory"),
        (["--workload", "{plugin}:not_a_workload"], "expected accumbench.Workload"),
        (["--workload", "{plugin}:broken_optimizer"],
         "workload plugin-mlp-broken: its optimizer cannot be built: Invalid learning rate: -1.0"),
        (["--workload", "mlp", "--scenario", "multitask-combined"], "needs a multi-task workload"),
        (["--workload", "mlp", "--steps", "99999999999"], "is not in the range 1<=x<=1000000"),
        (["--workload", "mlp", "--micro-batch", "8,x"], "--micro-batch takes comma-separated"),
        (["--suite", "nope"], "neither a built-in"),
        (["--workload", "mlp", "--workload-opt", "size"], "--workload-opt takes KEY=VALUE"),
        # NaN passes click's FloatRange (every comparison with NaN is false); inf means no cap.
        (["--workload", "mlp", "--ci-target", "nan", "--list"], "Invalid value for '--ci-target': 'nan' is not a finite"),
        (["--workload", "mlp", "--time-cap", "nan", "--list"], "Invalid value for '--time-cap': 'nan' is not a finite"),
        (["--workload", "mlp", "--time-cap", "inf", "--list"], "Invalid value for '--time-cap': 'inf' is not a finite"),
        (["--workload", "mlp", "--seed", "99999999999999999999999", "--list"], "does not fit in 64 bits"),
        (["--workload", "mlp", "--accum-steps", "99999999999999999999"],
         "error: --accum-steps 99999999999999999999 is too large (at most 1,000,000)"),
        (["--workload", "mlp", "--micro-batch", "2147483648"], "error: --micro-batch 2147483648 is too large"),
        (["--workload", "gpt", "--workload-opt", "padded=maybe", "--list"],
         "error: workload gpt: option padded takes true or false (also yes/no, on/off, 1/0), got 'maybe'"),
        (["--workload", "gpt", "--workload-opt", "seq_len=abc", "--list"],
         "error: workload gpt: option seq_len takes a whole number, got 'abc'"),
        (["--workload", "shared-trunk", "--workload-opt", "seq_len=0", "--list"],
         "error: workload shared-trunk: option seq_len must be at least 1, got 0"),
        (["--workload", "{plugin}:build_raises", "--freeze", "x", "--list"],
         "error: workload plugin-mlp-build-raises: build_model raised ZeroDivisionError: division by zero"),
        (["--workload", "mlp", "--out", ""], "Invalid value for '--out': the path is empty"),  # not '.'
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, plugin_path, args, message):
    args = [a.format(plugin=plugin_path) for a in args]
    result = CliRunner().invoke(main, ["run", "--device", "cpu", "--out", str(tmp_path / "o.jsonl"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    if message.startswith("error: "):  # ours (click's own usage errors print a usage line first)
        assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[group]]\nworkload = "mlp"\nscenarios = ["large-batch"]\nmicro_batch = [2]\nsteps = -1\n',
         "group 1: steps must be a positive integer, got -1"),
        ('[[group]]\nworkload = "mlp"\nscenarios = ["large-batch"]\nmicro_batch = [2]\nwarmup = 0\n',
         "group 1: warmup must be a positive integer, got 0"),
        ('[[group]]\nworkload = "mlp"\nscenarios = ["large-batch"]\nmicro_batch = [2]\namp = "fp8"\n',
         "group 1: amp must be one of none, bf16, fp16, got 'fp8'"),
        ('[defaults]\nwarmup = "two"\n[[group]]\nworkload = "mlp"\nscenarios = ["large-batch"]\nmicro_batch = [2]\n',
         "[defaults]: warmup must be a positive integer, got 'two'"),
        ('[[group]]\nworkload = "mlp"\nscenarios = ["large-batch"]\nmicro_batch = [2]\nset_to_none = "yes"\n',
         "group 1: set_to_none must be true or false, got 'yes'"),
        ('[[group]]\nworkload = "mlp"\nscenarios = ["large-batch"]\nmicro_batch = [2]\ncompile = "yes"\n',
         "group 1: compile must be true or false, got 'yes'"),
        ('[[group]]\nworkload = 5\nscenarios = ["large-batch"]\nmicro_batch = [2]\n',
         "group 1: workload must be a non-empty string, got 5"),
        (b"\xff\xfe garbage", "not UTF-8 text"),
    ],
)
def test_bad_suite_file_exits_2_naming_the_file_and_key(tmp_path, text, message):
    suite = tmp_path / "suite.toml"
    suite.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = CliRunner().invoke(main, ["run", "--device", "cpu", "--suite", str(suite), "--list"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {suite}: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_suite_case_its_workload_refuses_is_named_with_the_suite(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text('[[group]]\nworkload = "mlp"\noptions = { size = "huge" }\nscenarios = ["large-batch"]\n'
                     'micro_batch = [2]\n')
    result = CliRunner().invoke(main, ["run", "--device", "cpu", "--suite", str(suite), "--list"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {suite}: case mlp large-batch mb=2 x1: workload factory 'mlp' raised")


def test_a_case_two_suite_groups_repeat_is_measured_once(tmp_path):
    suite = tmp_path / "suite.toml"
    group = '[[group]]\nworkload = "mlp"\noptions = { size = "tiny" }\nscenarios = ["large-batch"]\nmicro_batch = [2]\n'
    suite.write_text(group + group.replace("[2]", "[2, 4]"))
    result = CliRunner().invoke(main, ["run", "--device", "cpu", "--suite", str(suite), "--list"])
    assert result.exit_code == 0, result.output
    assert "note: 1 case(s) of the suite repeat another" in result.stderr
    assert len(result.stdout.strip().splitlines()) == 2  # mb2 and mb4, once each


def test_optimizer_factory_that_refuses_a_stand_in_model_still_names_the_case(tmp_path, plugin_path):
    # Case ids name the optimizer; a factory written for the workload's own parameters is
    # asked about them (on the meta device), not about a one-weight stand-in.
    out = tmp_path / "strict.jsonl"
    result = invoke("run", "--device", "cpu", "--workload", f"{plugin_path}:strict_optimizer", "--micro-batch", "2",
                    "--accum-steps", "1", "--steps", "1", "--warmup", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    (record,) = read_records(out)
    assert record.status == "ok" and record.case_id.endswith("/SGD(foreach)"), record.case_id


def test_unknown_scenario_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["run", "--scenario", "huge-batch"])
    assert result.exit_code == 2
    assert "huge-batch" in result.output


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "r.jsonl"
    base = ["run", "--device", "cpu", "--workload", "mlp", "--workload-opt", "size=tiny", "--micro-batch", "2",
            "--accum-steps", "1,2", "--steps", "1", "--warmup", "1", "--out", str(out)]
    assert invoke(*base[:-6], "--micro-batch", "2", "--accum-steps", "1", "--steps", "1", "--warmup", "1",
                  "--out", str(out)).exit_code == 0
    assert len(read_records(out)) == 1
    refused = CliRunner().invoke(main, base)
    assert refused.exit_code == 2 and "--resume" in refused.output
    resumed = invoke(*base, "--resume")
    assert resumed.exit_code == 0
    records = read_records(out)
    assert len(records) == 3 and len({r.case_id for r in records}) == 3  # the first case not repeated
    overwritten = invoke(*base, "--overwrite")
    assert overwritten.exit_code == 0
    assert len(read_records(out)) == 3 and len(read_records(tmp_path / "r.jsonl.bak")) == 3


def test_resume_from_a_corrupt_file_names_the_line(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"schema": 1\n\n{"schema": 1}\n')  # a broken line before the last: not a torn write
    result = CliRunner().invoke(main, ["run", "--device", "cpu", "--workload", "mlp", "--out", str(out), "--resume"])
    assert result.exit_code == 2
    assert "r.jsonl:1: not valid JSON" in result.output


def test_list_prints_case_ids_without_running(tmp_path):
    result = invoke("run", "--device", "cpu", "--suite", "smoke", "--list")
    assert result.exit_code == 0
    ids = result.output.strip().splitlines()[:-1] if "case(s)" in result.output else result.output.split()
    assert any(i.startswith("gpt-tiny/accumulated/mb2/acc4") for i in ids)


def test_progress_lines_show_case_count_and_peak(tmp_path):
    result = CliRunner().invoke(main, ["run", "--device", "cpu", "--workload", "mlp", "--workload-opt", "size=tiny",
                                       "--micro-batch", "2", "--accum-steps", "1", "--steps", "1", "--warmup", "1",
                                       "--out", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0
    assert "[1/1] mlp large-batch mb=2 x1 ... peak" in result.output
    line = (tmp_path / "p.jsonl").read_text().splitlines()[0]
    assert json.loads(line)["status"] == "ok"


def test_smoke_suite_runs_clean_in_the_ci_gate():
    """The smoke suite runs once, in .ci/run's gate: `run --suite smoke` (exit 1 when a case
    errors) then `compare` against the committed baseline with --fail-on-missing (a case that was
    ok and now fails or runs out of memory regresses; a missing one fails). Running it here as
    well doubled the test time. What the gate relies on is checked here: the suite has at least
    30 cases, exactly the baseline's, and every one of them is ok in the baseline."""
    listed = invoke("run", "--device", "cpu", "--suite", "smoke", "--list").stdout.split()
    baseline = read_records(ROOT / "results" / "baseline-cpu.jsonl")
    assert len(listed) >= 30 and len(set(listed)) == len(listed)
    assert sorted(listed) == sorted(r.case_id for r in baseline)
    assert all(r.status == "ok" for r in baseline)
    ci = (ROOT / ".ci" / "run").read_text()
    gate = ci.index("accumbench run --suite smoke --device cpu --out")
    assert "accumbench compare results/baseline-cpu.jsonl" in ci[gate:] and "--fail-on-missing" in ci[gate:]
    assert "set -euo pipefail" in ci  # a failing gate command fails CI


def test_bytes_read_as_people_write_them():
    from accumbench.cli.common import format_bytes

    assert [format_bytes(n) for n in (512, 1040384, 4455800, 17224662016)] == [
        "512 B", "1016 KiB", "4.25 MiB", "16.0 GiB"]
