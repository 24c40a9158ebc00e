"""The regression gate's public entry points (the implementation lives in `accumbench.gate`).

Typical use from Python:

    from accumbench.compare import compare_results, render_text
    from accumbench.records import load_results

    comparison = compare_results(load_results("results/baseline-cpu.jsonl"), load_results("run.jsonl"))
    print(render_text(comparison))
    raise SystemExit(comparison.exit_code)
"""

from __future__ import annotations

from accumbench.gate.baseline import BaselineError, BaselinePlan, plan_update, write_baseline
from accumbench.gate.checks import MemoryCheck, Outcome, ThroughputCheck, Tolerance
from accumbench.gate.compare import (
    CaseComparison,
    Comparison,
    Mismatch,
    MismatchError,
    case_key,
    compare_results,
)
from accumbench.gate.table import render_json, render_markdown, render_text

__all__ = [
    "BaselineError",
    "BaselinePlan",
    "CaseComparison",
    "Comparison",
    "MemoryCheck",
    "Mismatch",
    "MismatchError",
    "Outcome",
    "ThroughputCheck",
    "Tolerance",
    "case_key",
    "compare_results",
    "plan_update",
    "render_json",
    "render_markdown",
    "render_text",
    "write_baseline",
]
