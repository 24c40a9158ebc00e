"""The report draws predicted against measured throughput, and predictions nowhere else."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.records import read_records
from accumbench.report.build import build_report

TINY = ["--workload", "mlp", "--workload-opt", "size=tiny", "--micro-batch", "2,4", "--accum-steps", "1"]


@pytest.mark.slow  # a run, an estimate and a whole report
def test_report_draws_predicted_vs_measured_and_keeps_predictions_out_of_throughput(tmp_path):
    runner = CliRunner()
    predicted, measured = tmp_path / "predicted.jsonl", tmp_path / "measured.jsonl"
    assert runner.invoke(main, ["estimate", *TINY, "--out", str(predicted)]).exit_code == 0
    result = runner.invoke(main, ["run", *TINY, "--device", "cpu", "--warmup", "1", "--steps", "2",
                                  "--out", str(measured)])
    assert result.exit_code == 0, result.output
    report = build_report([measured, predicted], tmp_path / "report")
    figure = report.figures["predicted_vs_measured_throughput"]
    points = figure.axes[0].collections[0].get_offsets()
    by_case = {r.case_id: r.samples_per_s for r in read_records(predicted)}
    measured_rates = {r.case_id: r.samples_per_s for r in read_records(measured)}
    # x is the measured rate, y the predicted one, of the same cases.
    assert sorted(points[:, 1].tolist()) == sorted(by_case[c] for c in measured_rates)
    assert sorted(points[:, 0].tolist()) == sorted(measured_rates.values())
    # The estimate section draws no throughput: its samples/s are predictions.
    estimate_section = next(s for s in report.sections if "estimate" in s.title)
    throughput = [b for b in estimate_section.blocks if b.kind.name == "throughput_vs_effective_batch"]
    assert all(b.png is None and not b.findings for b in throughput)
