"""summary.md: the key numbers as Markdown, short enough for a pull-request comment.

Per section: the environment in one line, how noisy the timing was, the memory and
throughput findings, one table of every case (peak
memory and throughput side by side) and the fitted memory lines. The figures stay in index.html.
"""

from __future__ import annotations

from typing import Sequence

from accumbench.report.sections import SectionReport
from accumbench.report.tables import Table


def _escape(text: str) -> str:
    # A pipe would end the cell; a newline would end the row.
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown_table(table: Table, columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of `table`, limited to `columns` (all by default)."""
    columns = list(columns or table.columns)
    index = [table.columns.index(c) for c in columns]
    numeric = [any(row[i].numeric for row in table.rows) for i in index]
    lines = ["| " + " | ".join(_escape(c) for c in columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(_escape(row[i].text) for i in index) + " |")
    return "\n".join(lines)


def _find(section: SectionReport, name: str) -> Table | None:
    for block in section.blocks:
        for table in block.tables:
            if table.name == name and table.rows:
                return table
    return None


def _key_table(section: SectionReport) -> str:
    memory = _find(section, "memory")
    if memory is None:
        return ""
    throughput = _find(section, "throughput")
    rates: dict[tuple[str, str, str], str] = {}
    if throughput is not None:
        for row in throughput.rows:
            rates[(row[0].text, row[1].text, row[2].text)] = f"{row[3].text} ({row[4].text})"
    lines = ["| workload | case | micro × steps | effective batch | status | peak allocated "
             "| of device | samples/s (95% CI) |", "|---|---|---:|---:|---|---:|---:|---:|"]
    for row in memory.rows:
        workload, case, micro, steps, effective, status, peak, _, share, _ = row
        rate = rates.get((workload.text, case.text, effective.text), "—")
        lines.append("| " + " | ".join(_escape(t) for t in (
            workload.text, case.text, f"{micro.text} × {steps.text}", effective.text,
            status.text, peak.text, share.text, rate)) + " |")
    return "\n".join(lines)


def render_summary(title: str, sections: Sequence[SectionReport], notes: Sequence[str]) -> str:
    """The summary as one Markdown string."""
    out = [f"## {title}", ""]
    for note in notes:
        out.append(f"> {_escape(note)}")
    if notes:
        out.append("")
    for section in sections:
        env = {row[0].text: row[1].text for row in section.environment.rows}
        out += [f"### {_escape(section.title)}", ""]
        facts = [f"{k} {env[k]}" for k in ("torch", "CUDA", "commit", "results file")
                 if env.get(k, "—") != "—"]
        if facts:
            out += ["_" + _escape(" · ".join(facts)) + "_", ""]
        if section.noise:
            out += ["_" + _escape(" ".join(section.noise)) + "_", ""]
        for name in ("memory_vs_effective_batch", "throughput_vs_effective_batch", "predicted_vs_measured_throughput"):
            block = next((b for b in section.blocks if b.kind.name == name), None)
            if block is not None and block.findings:
                out += [f"- {_escape(s)}" for s in block.findings] + [""]
        key = _key_table(section)
        if key:
            out += [key, ""]
        fits = _find(section, "fit")
        if fits is not None:
            out += ["Memory per sample (least-squares line of peak vs micro-batch):", "",
                    render_markdown_table(fits, ["workload", "scenario", "bytes per sample",
                                                 "intercept", "r²"]), ""]
        multitask = _find(section, "multitask")
        if multitask is not None:
            out += ["Multi-task, sequential vs combined:", "",
                    render_markdown_table(multitask, ["workload", "layout", "micro × steps",
                                                      "combined peak", "sequential peak",
                                                      "memory change",
                                                      "throughput, sequential / combined (95% CI)"]), ""]
        communication = _find(section, "communication")
        if communication is not None:
            block = next(b for b in section.blocks if b.kind.name == "ddp_communication")
            out += ["DDP communication, all-reduce every micro-step vs no_sync():", ""]
            out += [f"- {_escape(s)}" for s in block.findings]
            out += ([""] if block.findings else []) + [
                render_markdown_table(communication, ["workload", "scenario",
                                                      "micro-batch × steps (per rank)",
                                                      "synchronisation", "all-reduces per step",
                                                      "all-reduce time per step",
                                                      "samples/s (all ranks)"]), ""]
        fsdp_table = _find(section, "fsdp_communication")
        if fsdp_table is not None:
            block = next(b for b in section.blocks if b.kind.name == "fsdp_communication")
            out += ["FSDP communication, reduce-scatter every micro-step vs once per step:", ""]
            out += [f"- {_escape(s)}" for s in block.findings]
            out += ([""] if block.findings else []) + [
                render_markdown_table(fsdp_table, ["workload", "scenario", "micro-batch × steps (per rank)",
                                                   "ranks", "synchronisation", "reduce-scatters per step",
                                                   "all-gathers per step", "peak allocated (max over ranks)",
                                                   "samples/s (all ranks)"]), ""]
        predicted = _find(section, "predicted")
        if predicted is not None:
            out += ["Predicted (estimate meter, no GPU) vs measured samples/s, worst first:", "",
                    render_markdown_table(predicted), ""]
        equivalence = _find(section, "equivalence")
        if equivalence is not None:
            out += ["Gradient equivalence:", "",
                    render_markdown_table(equivalence, ["workload", "accum steps", "dtype",
                                                        "relative error", "verdict"]), ""]
        if section.failures.rows:
            out += [f"{len(section.failures.rows)} case(s) did not run; see index.html.", ""]
    out.append("Figures and full tables: `index.html` beside this file.")
    return "\n".join(out) + "\n"
