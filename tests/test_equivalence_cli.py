"""`accumbench check` from the command line: table, diagnosis, records, exit codes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.records import read_records

PLUGIN = str(Path(__file__).parent / "workloads" / "bn_plugin.py")


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    """The command sets torch's thread count (--threads, default 1); put it back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def invoke(*args: str):
    return CliRunner().invoke(main, ["check", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("check") / "check.jsonl"
    result = invoke("--out", str(out))
    return result, out


def test_default_check_reproduces_the_known_picture(default_run):
    result, out = default_run
    assert result.exit_code == 0, result.output  # every difference has a diagnosed cause
    rows = {}
    for line in result.stdout.splitlines():
        cells = line.split()
        if len(cells) > 4 and cells[1].isdigit():
            rows[(cells[0], int(cells[1]), cells[2])] = line
    assert {w for w, _, _ in rows} == {"mlp-tiny", "convnet-gn-tiny", "convnet-bn-tiny", "gpt-tiny-padded"}
    assert len(rows) == 15  # 3 workloads x N=2,4,8, plus gpt with mean and token
    for key, line in rows.items():
        bad = key[0] == "convnet-bn-tiny" or (key[0] == "gpt-tiny-padded" and key[2] == "mean")
        assert ("NOT equivalent" in line) == bad, line
    assert "BatchNorm" in rows[("convnet-bn-tiny", 4, "mean")]
    assert "features.0.1" in result.stdout and "GroupNorm" in result.stdout
    assert "--loss-norm token" in result.stdout and "scaler.update() once per optimizer step" in result.stdout
    assert "equivalent when <= 1e-10" in result.stdout


def test_default_check_writes_one_record_per_result(default_run):
    _, out = default_run
    records = read_records(out)
    assert len(records) == 15
    assert all(r.scenario == "equivalence" and r.status == "ok" and r.meter == "cpu" for r in records)
    bn = [r for r in records if r.workload == "convnet-bn-tiny"]
    assert [r.accum_steps for r in bn] == [2, 4, 8] and all(r.effective_batch == 4 * r.accum_steps for r in bn)
    assert all(r.equivalence["verdict"] == "not-equivalent" and r.equivalence["causes"] for r in bn)
    assert len({r.case_id for r in records}) == 15


def test_strict_fails_on_an_explained_difference():
    result = invoke("--workload", "convnet-bn", "--accum-steps", "2", "--strict")
    assert result.exit_code == 1
    assert "--strict: 1 result(s) not equivalent" in result.stderr


def test_unexplained_difference_fails_without_strict():
    result = invoke("--workload", f"{PLUGIN}:centering_mlp", "--accum-steps", "2")
    assert result.exit_code == 1
    assert "NOT equivalent, unexplained" in result.stdout and "no known cause" in result.stdout


def test_plugin_batchnorm_named_and_json_output():
    result = invoke("--workload", f"{PLUGIN}:bn_mlp", "--accum-steps", "2", "--json")
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["scenario"] == "equivalence" and data["equivalence"]["batchnorm_layers"] == ["stem_bn"]
    assert "stem_bn" in data["equivalence"]["causes"][0]


def test_float32_and_token_only(tmp_path):
    out = tmp_path / "c.jsonl"
    result = invoke("--workload", "gpt", "--workload-opt", "padded=true", "--accum-steps", "2",
                    "--loss-norm", "token", "--dtype", "float32", "--out", str(out))
    assert result.exit_code == 0, result.output
    (record,) = read_records(out)
    assert record.loss_norm == "token" and record.equivalence["dtype"] == "float32"
    assert record.equivalence["verdict"] == "equivalent" and record.equivalence["tolerance"] == 1e-5
    assert invoke("--workload", "mlp", "--accum-steps", "2", "--out", str(out), "--append").exit_code == 0
    assert len(read_records(out)) == 2


def test_a_failing_workload_is_an_error_record_with_a_hint(tmp_path):
    out = tmp_path / "c.jsonl"
    result = invoke("--workload", f"{PLUGIN}:float32_only_mlp", "--accum-steps", "2,4", "--out", str(out))
    assert result.exit_code == 1
    assert "--dtype float32" in result.stderr
    records = read_records(out)
    assert [r.status for r in records] == ["error", "error"] and "dtype" in records[0].error


def test_nan_gradients_are_blamed_on_the_batch_or_loss_not_the_grad_scaler(tmp_path):
    result = invoke("--workload", f"{PLUGIN}:nan_mlp", "--accum-steps", "2", "--out", str(tmp_path / "c.jsonl"))
    assert result.exit_code == 1
    assert "the large batch's gradients are not finite (nan or inf) in float64, without any GradScaler" in result.stderr
    assert "GradScaler found" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--accum-steps", "2,x"], "--accum-steps takes comma-separated positive integers"),
    (["--workload", "nope"], "unknown workload 'nope'"),
    (["--workload", "mlp", "--loss-norm", "token"], "needs a workload that counts its loss elements"),
    (["--workload-opt", "size=tiny"], "--workload-opt needs --workload"),
    (["--workload", "mlp", "--workload-opt", "nokey"], "--workload-opt takes KEY=VALUE"),
    (["--workload", "mlp", "--workload-opt", "colour=red"], "does not take options"),
    (["--accum-steps", "99999999999999999999"], "--accum-steps 99999999999999999999 is too large"),
    # check builds each model (on the meta device) before checking: a build that raises was a traceback
    (["--workload", f"{Path(__file__).parent / 'workloads' / 'plugin_models.py'}:build_raises"],
     "error: workload plugin-mlp-build-raises: build_model raised ZeroDivisionError: division by zero"),
    (["--workload", "gpt", "--workload-opt", "padded=maybe"], "option padded takes true or false"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_seed_beyond_64_bits_exits_2():
    # torch raises "Overflow when unpacking long long" for it: before, a failed check (exit 1).
    result = invoke("--workload", "mlp", "--seed", "99999999999999999999999")
    assert result.exit_code == 2
    assert "Invalid value for '--seed'" in result.stderr and "does not fit in 64 bits" in result.stderr
    assert "Traceback" not in result.output


def test_existing_out_file_is_not_overwritten_silently(tmp_path):
    out = tmp_path / "c.jsonl"
    out.write_text("{}\n")
    result = invoke("--workload", "mlp", "--out", str(out))
    assert result.exit_code == 2 and "--append" in result.stderr
    assert out.read_text() == "{}\n"


def test_help_teaches_with_examples():
    result = CliRunner().invoke(main, ["check", "--help"])
    assert result.exit_code == 0
    assert "accumbench check --workload gpt --workload-opt padded=true" in result.output
    assert "Exit codes" in result.output
    assert "check" in CliRunner().invoke(main, ["--help"]).output
