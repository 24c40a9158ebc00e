"""The gate on `accumbench check` records: equivalence may not get worse."""

from __future__ import annotations

import json

from click.testing import CliRunner

from accumbench.cli import main
from accumbench.gate.checks import IMPROVEMENT, REGRESSION, SAME, EquivalenceCheck


def _check(tmp_path, factory: str, name: str, variants) -> str:
    out = tmp_path / f"{name}.jsonl"
    result = CliRunner().invoke(main, ["check", "--workload", f"{variants}:{factory}", "--accum-steps", "2",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    return str(out)


def test_a_change_that_breaks_equivalence_fails_the_gate(tmp_path):
    from pathlib import Path

    variants = str(Path(__file__).parent / "workloads" / "equivalence_variants.py")
    before = _check(tmp_path, "layer_norm", "before", variants)
    again = _check(tmp_path, "layer_norm", "again", variants)
    after = _check(tmp_path, "batch_norm", "after", variants)
    same = CliRunner().invoke(main, ["compare", before, again, "--json"])
    assert same.exit_code == 0, same.output
    broken = CliRunner().invoke(main, ["compare", before, after, "--json"])
    assert broken.exit_code == 1, broken.output
    (case,) = json.loads(broken.stdout)["cases"]
    assert case["verdict"] == "regression"
    assert any("was equivalent, now not" in r for r in case["reasons"])


def test_equivalence_check_rules():
    check = EquivalenceCheck()
    eq = {"rel_error": 1e-16, "verdict": "equivalent", "tolerance": 1e-10, "explained": True}
    bn = {"rel_error": 0.3, "verdict": "not-equivalent", "tolerance": 1e-10, "explained": True}
    assert check.evaluate(eq, eq).verdict == SAME
    assert check.evaluate(bn, bn).verdict == SAME
    assert check.evaluate(eq, bn).verdict == REGRESSION
    assert check.evaluate(bn, eq).verdict == IMPROVEMENT
    assert check.evaluate(bn, {**bn, "rel_error": 0.7}).verdict == REGRESSION  # more than 2x worse
    assert check.evaluate(bn, {**bn, "explained": False}).verdict == REGRESSION
