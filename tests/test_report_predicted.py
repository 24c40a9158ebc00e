"""The report draws predicted against measured throughput, and predictions nowhere else."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from accumbench.cli import main
from accumbench.records import read_records, write_records
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


@pytest.fixture(scope="module")
def paired_report(tmp_path_factory):
    """A report of hand-made estimates and measurements of the same three cases (tokens counted
    too), one file each: two sections, so the predicted-vs-measured figure joins them."""
    from test_report import H100, rec

    tmp_path = tmp_path_factory.mktemp("paired")
    measured, predicted = [], []
    for micro, seconds in ((8, 0.04), (16, 0.05), (32, 0.08)):
        common = dict(micro=micro, peak_allocated=micro * 2**20)
        measured.append(rec(**common, step_times_s=[seconds] * 6, samples_per_s=micro / seconds,
                            tokens_per_s=512 * micro / seconds))
        predicted.append(rec(**common, meter="estimate", device_name=f"estimate: {H100}", step_times_s=[],
                             samples_per_s=1.2 * micro / seconds, tokens_per_s=1.2 * 512 * micro / seconds))
    paths = tmp_path / "measured.jsonl", tmp_path / "predicted.jsonl"
    write_records(paths[0], measured)
    write_records(paths[1], predicted)
    return build_report(list(paths), tmp_path / "report")


def test_the_page_and_summary_show_predicted_vs_measured_across_sections(paired_report):
    report = paired_report
    across = report.sections[-1]
    assert across.across and [s.across for s in report.sections] == [False, False, True]
    block = across.blocks[0]
    assert block.kind.name == "predicted_vs_measured_throughput" and block.png is not None
    assert block.findings == ("Predicted samples/s are within 20% of the measured (median over 3 cases); the worst "
                              "is +20% (gpt/large-batch/mb8/acc1).",)
    table = block.tables[0]
    assert [c.value for c in table.column("error")] == pytest.approx([0.2] * 3)
    page = (report.out_dir / "index.html").read_text()
    assert 'id="across-predicted_vs_measured_throughput"' in page and "in 2 sections" in page
    summary = (report.out_dir / "summary.md").read_text()
    assert "Predicted (estimate meter, no GPU) vs measured samples/s, worst first:" in summary
    assert "| gpt | gpt/large-batch/mb32/acc1 | 400.0 | 480.0 | +20.0% |" in summary


def test_predicted_tokens_per_second_are_drawn_nowhere(paired_report):
    estimate_section = next(s for s in paired_report.sections if "estimate" in s.title)
    kinds = {b.kind.name: b for b in estimate_section.blocks}
    assert "tokens_vs_effective_batch" not in kinds
    throughput = kinds["throughput_vs_effective_batch"].tables[0]
    assert all(cell.value is None for cell in throughput.column("tokens/s"))
    # Its samples/s are said as predictions, not as a measurement with "too few steps".
    assert [c.text for c in throughput.column("samples/s")] == ["~240 predicted", "~384 predicted", "~480 predicted"]
    assert {c.text for c in throughput.column("samples/s 95% CI")} == {"none (an estimate)"}
    measured_section = paired_report.sections[0]
    assert "tokens_vs_effective_batch" in {b.kind.name for b in measured_section.blocks}
