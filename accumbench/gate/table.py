"""Render a `Comparison`: a plain-text table for terminals, Markdown for PR comments and the
GitHub step summary, JSON for tools. Pure functions from a Comparison to a string.

Cases are listed worst first (regressions, ungated slowdowns, improvements, unchanged), in file
order within each group, so the line a reviewer needs is at the top.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from accumbench.gate.checks import IMPROVEMENT, NOT_AVAILABLE, REGRESSION, SAME, UNRESOLVED, UNTESTED, format_bytes
from accumbench.gate.compare import VERDICTS, WARNING, CaseComparison, Comparison
from accumbench.gate.stats import samples_needed
from accumbench.textfmt import text_table

VERDICT_LABELS = {
    REGRESSION: "REGRESSION",
    WARNING: "slower (not gated)",
    UNRESOLVED: "not resolved",
    IMPROVEMENT: "improved",
    SAME: "ok",
}
_HEADERS = ("case", "peak base", "peak now", "Δ peak", "samples/s base", "samples/s now", "Δ thpt", "p", "verdict")


def render_text(comparison: Comparison) -> str:
    """A fixed-width table with the rules in a header and the reasons and lists below it."""
    lines = [
        f"accumbench compare: baseline {comparison.baseline_source}  vs  current {comparison.current_source}",
        f"memory gate:     {comparison.memory_check.describe()}",
        f"throughput gate: {comparison.throughput_check.describe()}",
        "",
    ]
    rows = [_cells(c) for c in _ordered(comparison.cases)]
    if rows:
        lines += text_table(_HEADERS, rows, right=range(1, 8)).split("\n")
    else:
        lines.append("(no case is present on both sides)")
    lines += _details(comparison, bullet="  ", code=lambda s: s)
    lines += ["", _summary_line(comparison)]
    return "\n".join(lines) + "\n"


def render_markdown(comparison: Comparison) -> str:
    """GitHub-flavoured Markdown: a headline with the outcome, the table, then the details."""
    icon = "❌" if comparison.failed else "✅"
    lines = [
        f"### {icon} accumbench compare: {_headline(comparison)}",
        "",
        f"Baseline `{comparison.baseline_source}` vs current `{comparison.current_source}`.",
        f"Memory gate: {comparison.memory_check.describe()}.",
        f"Throughput gate: {comparison.throughput_check.describe()}.",
        "",
    ]
    if comparison.cases:
        lines.append("| " + " | ".join(_HEADERS) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * 7 + ["---"]) + "|")
        for case in _ordered(comparison.cases):
            cells = list(_cells(case))
            cells[0] = f"`{_md_escape(cells[0])}`"
            if case.verdict == REGRESSION:
                cells[-1] = f"**{cells[-1]}**"
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("_No case is present on both sides._")
    lines += _details(comparison, bullet="- ", code=lambda s: f"`{_md_escape(s)}`")
    lines += ["", f"_{_summary_line(comparison)}_"]
    return "\n".join(lines) + "\n"


def render_json(comparison: Comparison) -> str:
    """The comparison as indented JSON (infinite or NaN changes become null)."""
    return json.dumps(_finite(comparison.to_dict()), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


# --- pieces ---------------------------------------------------------------------------------

def _ordered(cases: Sequence[CaseComparison]) -> list[CaseComparison]:
    rank = {v: i for i, v in enumerate(VERDICTS)}
    return sorted(cases, key=lambda c: rank[c.verdict])  # sorted() is stable: file order kept


def _cells(case: CaseComparison) -> tuple[str, ...]:
    mem = case.memory
    if case.baseline_status == "ok" and case.current_status == "ok":
        peak_base, peak_now = _bytes(mem.baseline), _bytes(mem.current)
    else:
        peak_base = _bytes(mem.baseline) if case.baseline_status == "ok" else case.baseline_status
        peak_now = _bytes(mem.current) if case.current_status == "ok" else case.current_status
    tp = case.throughput
    if tp.verdict == UNTESTED:
        p = "too few"
    elif tp.p_value is not None:
        p = f"{tp.p_value:.2g}"
    else:
        p = "-"
    return (
        case.key,
        peak_base,
        peak_now,
        _percent(mem.change) if mem.verdict != NOT_AVAILABLE else "-",
        _rate(case.baseline_samples_per_s),
        _rate(case.current_samples_per_s),
        _percent(case.samples_per_s_change) if tp.verdict != NOT_AVAILABLE else "-",
        p,
        VERDICT_LABELS[case.verdict],
    )


def _details(comparison: Comparison, bullet: str, code) -> list[str]:
    lines: list[str] = []
    sections = (
        ("Regressions", comparison.with_verdict(REGRESSION)),
        ("Slower, not gated", comparison.with_verdict(WARNING)),
        ("Not resolved: a change beyond the tolerance but within the runs' scatter, never gated",
         comparison.with_verdict(UNRESOLVED)),
        ("Improvements", comparison.with_verdict(IMPROVEMENT)),
    )
    for title, cases in sections:
        if cases:
            lines += ["", f"{title} ({len(cases)}):"]
            for case in cases:
                lines.append(f"{bullet}{code(case.key)}: " + "; ".join(case.reasons or ("throughput slower",)))
    untested = [c for c in comparison.cases if c.throughput.verdict == UNTESTED]
    if untested:
        alpha = comparison.throughput_check.alpha
        lines += ["", f"Throughput not tested ({len(untested)}): fewer than {samples_needed(alpha)} step times "
                      f"on a side cannot reach p < {alpha:g} (measure more steps: accumbench run --steps N)"]
        lines += [f"{bullet}{code(c.key)}" for c in untested]
    missing_title = "Only in baseline (missing from current"
    missing_title += ", fails the gate)" if comparison.fail_on_missing else ")"
    for title, keys in ((missing_title, comparison.only_baseline),
                        ("Only in current (new, not gated)", comparison.only_current)):
        if keys:
            lines += ["", f"{title} ({len(keys)}):"]
            lines += [f"{bullet}{code(k)}" for k in keys]
    if comparison.notes:
        lines += ["", "Notes:"]
        lines += [f"{bullet}{note}" for note in comparison.notes]
    return lines


def _headline(comparison: Comparison) -> str:
    n = len(comparison.regressions)
    missing = len(comparison.only_baseline) if comparison.fail_on_missing else 0
    parts = []
    if n:
        parts.append(f"{n} regression{'s' if n != 1 else ''}")
    if missing:
        parts.append(f"{missing} missing case{'s' if missing != 1 else ''}")
    return ", ".join(parts) if parts else "no regression"


def _summary_line(comparison: Comparison) -> str:
    counts = comparison.counts()
    verdict = "FAIL" if comparison.failed else "PASS"
    # A case whose throughput was not tested is "ok" on memory only: say how many, beside it.
    untested = counts["throughput_untested"]
    unsure = "".join(part for n, part in ((counts[UNRESOLVED], f", {counts[UNRESOLVED]} not resolved"),
                                          (untested, f"; throughput not tested in {untested}")) if n)
    return (
        f"{verdict}: {_headline(comparison)} in {len(comparison.cases)} compared case(s) "
        f"({counts[IMPROVEMENT]} improved, {counts[SAME]} ok, {counts[WARNING]} slower but not gated{unsure}; "
        f"{counts['only_baseline']} only in baseline, {counts['only_current']} only in current)"
    )


def _bytes(value: float | None) -> str:
    return "-" if value is None else format_bytes(value)


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _percent(change: float | None) -> str:
    if change is None:
        return "-"
    if change == 0:
        return "±0%"
    if math.isinf(change):
        return "+inf" if change > 0 else "-inf"
    return f"{change:+.1%}" if abs(change) >= 0.001 else f"{change:+.3%}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
