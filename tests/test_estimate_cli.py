"""accumbench estimate: records, exit codes, agreement with run --device cpu."""

from __future__ import annotations

from click.testing import CliRunner

from accumbench.cli import main
from accumbench.estimate_assumptions import assumptions_for
from accumbench.records import read_records

TINY_MLP = ["--workload", "mlp", "--workload-opt", "size=tiny", "--micro-batch", "2,4", "--accum-steps", "1,2"]


def test_estimate_writes_estimate_records_that_match_run_on_cpu(tmp_path):
    runner = CliRunner()
    out = tmp_path / "estimate.jsonl"
    result = runner.invoke(main, ["estimate", *TINY_MLP, "--device-kind", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    estimates = read_records(out)
    assert len(estimates) == 5 and {r.meter for r in estimates} == {"estimate"}  # large batch 2, 4, 8
    assert all(r.assumptions["device_kind"] == "cpu" and r.step_times_s == () for r in estimates)
    # The cpu kind predicts no speed (no step-time constants).
    assert all(r.samples_per_s is None and r.predicted_step_time_s is None for r in estimates)
    assert "samples/s" not in result.stdout

    measured_path = tmp_path / "run.jsonl"
    result = runner.invoke(main, ["run", *TINY_MLP, "--device", "cpu", "--warmup", "1", "--steps", "1",
                                  "--out", str(measured_path)])
    assert result.exit_code == 0, result.output
    measured = {r.case_id: r.peak_allocated for r in read_records(measured_path)}
    assert {r.case_id: r.peak_allocated for r in estimates} == measured


def test_estimate_for_an_h100_lists_the_assumptions_it_applied(tmp_path):
    out = tmp_path / "h100.jsonl"
    result = CliRunner().invoke(main, ["estimate", *TINY_MLP, "--assume", "scratch_bytes=1MiB", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = read_records(out)[0]
    assert record.device_name.startswith("estimate: H100") and record.device_total_memory > 70 * 2**30
    assert record.assumptions["scratch_bytes"] == 1 << 20
    assert "scratch-allowance" in record.assumptions["applied"]
    assert record.breakdown["other"] >= (1 << 20) + 2 * 32 * (1 << 20)


def test_estimate_lists_cases_and_rejects_bad_input(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(main, ["estimate", *TINY_MLP, "--list"])
    assert listed.exit_code == 0 and "mlp-tiny/accumulated/mb2/acc2" in listed.output
    for args, message in [
        (["--assume", "nope=1"], "unknown assumption 'nope'"),
        (["--assume", "novalue"], "KEY=VALUE"),
        (["--assume", "attention_kernel=fast"], "attention_kernel must be one of"),
        (["--device-kind", "tpu"], "Invalid value"),
    ]:
        result = runner.invoke(main, ["estimate", *TINY_MLP, *args, "--out", str(tmp_path / "x.jsonl")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    assert "Examples:" in runner.invoke(main, ["estimate", "--help"]).output
    assert "Examples:" in runner.invoke(main, ["plan", "--help"]).output


def test_the_default_suite_is_estimated_without_its_compiled_cases_unless_compile_is_asked_for(tmp_path):
    # `accumbench estimate` with no flags is the first example of its --help: the default suite
    # has torch.compile cases, which the estimate cannot predict; they are left out with a note.
    runner = CliRunner()
    listed = runner.invoke(main, ["estimate", "--list"])
    assert listed.exit_code == 0, listed.output
    every = runner.invoke(main, ["run", "--suite", "default", "--list", "--device", "cpu"])
    assert every.exit_code == 0, every.output
    compiled = [line for line in every.stdout.splitlines() if line.endswith("/compile")]
    assert compiled
    assert listed.stdout.splitlines() == [line for line in every.stdout.splitlines() if line not in compiled]
    assert f"note: leaving out the suite's {len(compiled)} torch.compile case(s)" in listed.stderr
    refused = runner.invoke(main, ["estimate", "--list", "--compile"])
    assert refused.exit_code == 2 and "does not predict --compile" in refused.output


def test_resume_refuses_other_assumptions_naming_the_one_that_differs(tmp_path):
    out = str(tmp_path / "e.jsonl")
    runner = CliRunner()
    mlp = ["estimate", "--workload", "mlp", "--workload-opt", "size=tiny", "--accum-steps", "1", "--out", out]
    assert runner.invoke(main, [*mlp, "--micro-batch", "2"]).exit_code == 0
    more = [*mlp, "--micro-batch", "2,4", "--resume"]
    refused = runner.invoke(main, [*more, "--assume", "host_op_seconds=1e-5"])
    assert refused.exit_code == 2, refused.output
    assert f"measured with assumptions.host_op_seconds={assumptions_for('h100').host_op_seconds!r}" in refused.output
    assert "asks for assumptions.host_op_seconds=1e-05" in refused.output
    resumed = runner.invoke(main, more)
    assert resumed.exit_code == 0, resumed.output
    assert len(read_records(out)) == 2
