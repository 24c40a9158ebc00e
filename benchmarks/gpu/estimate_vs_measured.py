"""Check the estimate meter against the CUDA meter, and run what `plan` recommends.

Usage (on the GPU machine, after the default suite was measured there):

    accumbench run --device cuda --suite default --out OUTDIR/measured.jsonl      # ~10 min
    python benchmarks/gpu/estimate_vs_measured.py OUTDIR OUTDIR/measured.jsonl   # ~2 min

1. Estimates every case of the `default` suite for the device kind of this GPU (H100, H200 or
   A100 by name; H100 otherwise, said in the output) and writes OUTDIR/estimates.jsonl.
2. Joins them with the measured records by case id and writes OUTDIR/estimate_vs_measured.csv
   and .md: estimated and measured peak, error, and the same for the live bytes before the step
   (baseline: parameters, optimizer state, cuBLAS workspaces), which isolates the workspace
   assumption. The acceptance target is |error| <= 3% on the peak of every case measured ok.
   The residuals (measured - estimated) per workload and scenario are summarised with a line fit
   against micro-batch: a constant residual points at a workspace, one growing with the
   micro-batch at per-sample scratch the estimate does not model.
3. Plans GPT-2 (gpt size=gpt2, bf16) for effective batch 256 in 24 GiB from estimates, then runs
   the recommended configuration with the cuda meter and checks it does not run out of memory
   and peaks within the budget: OUTDIR/plan_check.json.

Without MEASURED.jsonl only steps 1 and 3 run. Exit code 1 when a checked case is off by more
than 3% or the planned configuration fails.

The same comparison validates the estimate on a CPU-only machine against the cpu meter:

    accumbench run --device cpu --suite smoke --out /tmp/smoke.jsonl
    python benchmarks/gpu/estimate_vs_measured.py results/estimate-vs-cpu /tmp/smoke.jsonl \
        --suite smoke --device-kind cpu
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

from accumbench.cases import Case, load_suite
from accumbench.estimate import estimate_cases
from accumbench.estimate_assumptions import assumptions_for, kind_for_device_name
from accumbench.fit import fit_memory_line
from accumbench.plan import (
    NothingFits,
    candidate_cases,
    format_plan,
    make_plan,
    observations_from_records,
    plan_to_dict,
)
from accumbench.records import read_records, write_records
from accumbench.report.data import lever_label
from accumbench.runner import Runner

TOLERANCE = 0.03
PLAN_WORKLOAD, PLAN_OPTIONS, PLAN_EFFECTIVE, PLAN_BUDGET = "gpt", {"size": "gpt2"}, 256, 24 * 2**30


def device_kind() -> tuple[str, str]:
    """The assumptions' device kind for this GPU, and the GPU's name."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return kind_for_device_name(name) or "h100", name


def compare(estimates, measured, out: Path) -> bool:
    """Write the side-by-side table; True when every ok case is within the tolerance."""
    by_id = {r.case_id: r for r in measured}
    rows = []
    for e in estimates:
        m = by_id.get(e.case_id)
        if m is None:
            continue
        both_ok = m.status == "ok" and e.peak_allocated is not None
        error = (e.peak_allocated - m.peak_allocated) / m.peak_allocated if both_ok else None
        base_error = ((e.baseline_allocated - m.baseline_allocated) / m.baseline_allocated
                      if m.status == "ok" and m.baseline_allocated and e.baseline_allocated is not None else None)
        rows.append({
            "case_id": e.case_id, "workload": e.workload, "scenario": e.scenario, "levers": lever_label(e),
            "micro_batch": e.micro_batch,
            "accum_steps": e.accum_steps, "measured_status": m.status, "estimate_status": e.status,
            "estimate_peak": e.peak_allocated, "measured_peak": m.peak_allocated,
            "error": error, "estimate_baseline": e.baseline_allocated, "measured_baseline": m.baseline_allocated,
            "baseline_error": base_error, "within_3pct": None if error is None else abs(error) <= TOLERANCE,
        })
    with open(out / "estimate_vs_measured.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["case_id"])
        writer.writeheader()
        writer.writerows(rows)
    checked = [r for r in rows if r["error"] is not None]
    worst = max((abs(r["error"]) for r in checked), default=0.0)
    ok = all(r["within_3pct"] for r in checked)

    def mib(n):
        return "-" if n is None else f"{n / 2**20:,.1f}"

    def pct(x):
        return "-" if x is None else f"{x:+.2%}"

    def cell(text):  # a LoRA target pattern holds '|', which would split a Markdown table's cell
        return str(text).replace("|", "\\|")

    lines = [
        "# Estimate vs measured peak memory",
        "",
        f"Estimates: {estimates[0].device_name}; measured: {measured[0].device_name} ({measured[0].meter} meter), "
        f"torch {measured[0].torch_version}. Made by `python {' '.join(sys.argv)}`.",
        "",
        f"{len(checked)} case(s) measured ok, worst |error| {worst:.2%} (target <= {TOLERANCE:.0%}): "
        f"{'PASS' if ok else 'FAIL'}. Cases measured OOM are listed with the estimate's prediction.",
        "",
        "| case | measured | estimate (MiB) | measured (MiB) | error | baseline est. (MiB) | baseline meas. (MiB) "
        "| baseline error |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {cell(r['case_id'])} | {r['measured_status']} | {mib(r['estimate_peak'])} | "
                     f"{mib(r['measured_peak'])} | {pct(r['error'])} | {mib(r['estimate_baseline'])} | "
                     f"{mib(r['measured_baseline'])} | {pct(r['baseline_error'])} |")
    lines += ["", "## Residuals (measured - estimated) against micro-batch", "",
              "| workload | scenario | levers | cases | residual at smallest micro-batch (MiB) | per sample (MiB) | r2 |",
              "|---|---|---|---:|---:|---:|---:|"]
    groups: dict[tuple, list] = {}
    for r in checked:  # a lever changes the memory line: its cases are a group of their own
        groups.setdefault((r["workload"], r["scenario"], r["levers"]), []).append(r)
    for (workload, scenario, levers), members in groups.items():
        micro = [r["micro_batch"] for r in members]
        residual = [r["measured_peak"] - r["estimate_peak"] for r in members]
        if len(set(micro)) >= 2:
            fit = fit_memory_line(micro, residual)
            lines.append(f"| {workload} | {scenario} | {cell(levers)} | {len(members)} | {fit.predict(min(micro)) / 2**20:,.1f} | "
                         f"{fit.bytes_per_sample / 2**20:,.3f} | {fit.r2:.3f} |")
        else:
            lines.append(f"| {workload} | {scenario} | {cell(levers)} | {len(members)} | {residual[0] / 2**20:,.1f} | - | - |")
    (out / "estimate_vs_measured.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return ok


def plan_and_run(kind: str, out: Path) -> bool:
    """Plan GPT-2 for effective batch 256 in 24 GiB from estimates; run the recommendation."""
    assumptions = assumptions_for(kind)
    cases = candidate_cases(PLAN_WORKLOAD, PLAN_OPTIONS, PLAN_EFFECTIVE, amp="bf16")
    records = estimate_cases(cases, assumptions)
    try:
        plan = make_plan(PLAN_EFFECTIVE, PLAN_BUDGET, observations_from_records(records), exact_source="estimated",
                         source=f"estimates ({records[0].device_name})", workload=records[0].workload)
    except NothingFits as exc:
        print(f"plan: no configuration fits: {exc}")
        (out / "plan_check.json").write_text(json.dumps({"error": str(exc)}, indent=2))
        return False
    text = format_plan(plan)
    print(text)
    (out / "plan.txt").write_text(text + "\n")
    chosen = plan.recommended
    scenario = "large-batch" if chosen.accum_steps == 1 else "accumulated"
    case = Case(PLAN_WORKLOAD, scenario, chosen.micro_batch, chosen.accum_steps, tuple(PLAN_OPTIONS.items()),
                amp="bf16", warmup=2, steps=3)
    measured = Runner(torch.device("cuda")).measure(case)
    fits = measured.status == "ok" and measured.peak_allocated <= PLAN_BUDGET
    result = {
        "plan": plan_to_dict(plan),
        "ran": {"case_id": measured.case_id, "status": measured.status, "error": measured.error,
                "peak_allocated": measured.peak_allocated, "peak_reserved": measured.peak_reserved,
                "samples_per_s": measured.samples_per_s},
        "predicted_peak": chosen.predicted_peak,
        "error": (chosen.predicted_peak - measured.peak_allocated) / measured.peak_allocated
        if measured.peak_allocated else None,
        "within_budget": fits,
    }
    (out / "plan_check.json").write_text(json.dumps(result, indent=2))
    print(f"ran {measured.case_id}: {measured.status}, peak "
          f"{(measured.peak_allocated or 0) / 2**30:.2f} GiB (predicted {chosen.predicted_peak / 2**30:.2f} GiB), "
          f"reserved {(measured.peak_reserved or 0) / 2**30:.2f} GiB, budget {PLAN_BUDGET / 2**30:.0f} GiB: "
          f"{'OK' if fits else 'FAILED'}")
    return fits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("measured", type=Path, nargs="?", help="accumbench run --suite default results (JSONL)")
    parser.add_argument("--suite", default="default", help="suite to estimate (default: default)")
    parser.add_argument("--device-kind", default=None, help="assumptions to use (default: from the GPU's name)")
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    kind, name = device_kind()
    kind = args.device_kind or kind
    print(f"device: {name} -> assumptions for {kind}")
    started = time.perf_counter()
    estimates = estimate_cases(load_suite(args.suite), assumptions_for(kind))
    elapsed = time.perf_counter() - started
    write_records(args.outdir / "estimates.jsonl", estimates)
    print(f"estimated {len(estimates)} {args.suite}-suite cases in {elapsed:.1f} s")
    ok = True
    if args.measured is not None:
        ok = compare(estimates, read_records(args.measured), args.outdir)
    if torch.cuda.is_available() and kind != "cpu":
        ok = plan_and_run(kind, args.outdir) and ok
    else:
        print("no CUDA device: the planned configuration was not run")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
