"""`accumbench check` records go through `report` (no memory, an equivalence figure)."""

from __future__ import annotations

from click.testing import CliRunner

from accumbench.cli import main


def test_report_of_check_records_draws_the_equivalence_figure(tmp_path):
    out = tmp_path / "check.jsonl"
    result = CliRunner().invoke(main, ["check", "--workload", "mlp", "--workload-opt", "size=tiny",
                                       "--accum-steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(main, ["report", str(out), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert (tmp_path / "report" / "gradient_equivalence.png").exists()
    assert not (tmp_path / "report" / "memory_vs_effective_batch.png").exists()
    assert "mlp-tiny" in (tmp_path / "report" / "index.html").read_text()
