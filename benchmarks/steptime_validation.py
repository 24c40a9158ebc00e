"""Fit the step-time model's constants on measured GPU steps, and say how well it predicts the
cases it was not fitted on.

Usage (CPU only, ~3 minutes: the estimate of the default suite and 20 fits):

    python benchmarks/steptime_validation.py results/estimate-vs-h100 \
        results/NVIDIA-H100-80GB-HBM3/default.jsonl --device-kind h100 \
        --repeats results/NVIDIA-H100-80GB-HBM3/validation/*.jsonl

The committed calibration is that H100 run. A default-suite run of another GPU validates the
model there the same way (its own fits, its data-sheet peaks), e.g. what
`benchmarks/gpu/steptime_repeats.sh OUT --reference` measures on an H200:

    python benchmarks/steptime_validation.py OUT/validation OUT/default.jsonl --device-kind h200 \
        --repeats OUT/repeat*.jsonl

1. Estimates every case of the `default` suite for the device kind on fake tensors and keeps
   each case's op table (`accumbench.steptime.OpTable`).
2. Takes the GEMM and convolution efficiencies and the kernel floor (`flop_efficiency`,
   `conv_flop_efficiency`, `kernel_floor_seconds`) from the microbenchmarks of `--constants`
   (`benchmarks/gpu/speed_constants.py`: GPT-2's MLP GEMM, the ConvNet's first convolution, a
   tiny kernel back to back; efficiencies are fractions of each device's own data-sheet peak, so
   a sibling GPU's stand in), and fits the four others (`host_op_seconds`, `launch_seconds`,
   `step_host_seconds`, `bandwidth_efficiency`; `host_tensor_seconds`, `batch_norm_bandwidth`
   and the peaks and bandwidths stay at the kind's values) by least squares on
   log(predicted / measured samples/s).
3. Honest error: leave one workload out. For each workload the constants are fitted on the
   others and its cases are predicted with them: per case predicted vs measured samples/s, the
   median absolute error, the worst (also split by the model's host- or device-bound verdict),
   Spearman's rank correlation within each workload, and how many of the pairs the measurements
   resolve the prediction orders right (`accumbench.steptime.pair_order`), and how far the
   predicted ratio of two configurations of one workload is off in 95% of pairs
   (`accumbench.steptime.ratio_error`: the device kind's `speed_ratio_error`, the interval
   `accumbench plan` puts on a predicted slowdown). Repeated with the measured constants fitted
   as well, to show why they are measured instead: without GPT-2 no training workload pins the
   GEMM efficiency, and the kernel floor fits at its bound. A second hold-out keeps
   configurations out: GPT-2 fitted on its large-batch cases (and the other workloads),
   predicted on its accumulated ones.
4. The same leave-one-workload-out with all four device constants of `--constants` and only the
   host costs fitted, and every case predicted with the measured constants and nothing fitted
   (`step_host_seconds` 0: no microbenchmark measures it): constants that owe nothing to the
   workloads make every case a held-out one.
5. With `--repeats`, the spread of the same case measured in separate processes: the floor under
   any comparison with one run (only runs on the measured file's device count: another GPU's
   are left out, and said so); and, for the cases measured in at least three processes
   (`benchmarks/gpu/steptime_repeats.sh` measures 40 of them again), the held-out predictions
   against the median of their runs.
6. Writes OUTDIR/steptime_vs_measured.csv and .md, and prints the constants fitted on all cases
   (what `accumbench/estimate_assumptions.py` holds as H100_FITTED) and the held-out ratio error
   (its H100_SPEED_RATIO_ERROR).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from accumbench.cases import load_suite
from accumbench.estimate import estimate_cases
from accumbench.estimate_assumptions import assumptions_for
from accumbench.records import read_records
from accumbench.stats import StepTimes, typical_spread
from accumbench.steptime import SpeedConstants, pair_order, predict_step_time, ratio_error, spearman

# host_tensor_seconds (host time per tensor of a foreach op) is not fitted and stays at the kind's
# value (0): fitted too, it once made the held-out error worse (without GPT-2 the fit put all host
# time on it); since in-place writes are counted it goes to its lower bound in every fold.
FITTED = ("host_op_seconds", "launch_seconds", "step_host_seconds", "bandwidth_efficiency")
# Measured by microbenchmarks, not fitted: without GPT-2, GEMM-bound kernels are a small share of
# every training case's step, and a fit leaves the GEMM efficiency where it starts (or anywhere);
# fitted, the kernel floor goes to its lower bound (no case's time depends on it).
MEASURED = ("flop_efficiency", "conv_flop_efficiency", "kernel_floor_seconds")
# Each constant's starting value and bounds for the fit.
BOUNDS = {"host_op_seconds": (5e-6, 1e-8, 1e-3), "launch_seconds": (5e-6, 1e-8, 1e-3),
          "step_host_seconds": (1e-3, 1e-7, 2e-2), "kernel_floor_seconds": (2e-6, 1e-8, 1e-4),
          "bandwidth_efficiency": (0.7, 0.05, 1.0), "flop_efficiency": (0.5, 0.02, 1.0),
          "conv_flop_efficiency": (0.3, 0.02, 1.0)}
# What benchmarks/gpu/speed_constants.py measures on the device itself.
DEVICE_SIDE = ("kernel_floor_seconds", "flop_efficiency", "bandwidth_efficiency", "conv_flop_efficiency")
HOST_SIDE = tuple(name for name in FITTED if name not in DEVICE_SIDE)
# Microbenchmarks of an H200 (the H100's sibling: the same compute, more bandwidth).
DEFAULT_CONSTANTS = Path("results/NVIDIA-H200/steptime/speed_constants.json")


@dataclasses.dataclass
class Point:
    """One measured case with its op table."""

    case_id: str
    workload: str
    scenario: str
    micro_batch: int
    accum_steps: int
    measured: float
    table: object
    times: StepTimes  # the measured step times (for which pairs the measurements can order)


def speed_with(base: SpeedConstants, theta: np.ndarray, names: tuple[str, ...] = FITTED) -> SpeedConstants:
    """`base` with the constants `names` set from log-space parameters."""
    return dataclasses.replace(base, **dict(zip(names, np.exp(theta).tolist())))


def with_measured(base: SpeedConstants, constants: dict[str, float], names: tuple[str, ...]) -> SpeedConstants:
    """`base` with the constants `names` taken from a microbenchmark's `constants`."""
    return dataclasses.replace(base, **{name: constants[name] for name in names})


def predict(point: Point, speed: SpeedConstants) -> float:
    """Predicted samples/s of one case."""
    seconds = predict_step_time(point.table, speed, point.accum_steps).seconds
    return point.micro_batch * point.accum_steps / seconds


def fit(points: list[Point], base: SpeedConstants, names: tuple[str, ...] = FITTED) -> SpeedConstants:
    """Least squares on log(predicted / measured samples/s) over `points`: the constants `names`
    fitted (from their BOUNDS start), every other one kept at `base`'s value."""
    start, lower, upper = (np.log([BOUNDS[name][i] for name in names]) for i in range(3))

    def residuals(theta: np.ndarray) -> np.ndarray:
        speed = speed_with(base, theta, names)
        return np.array([math.log(predict(p, speed) / p.measured) for p in points])

    result = least_squares(residuals, start, bounds=(lower, upper), diff_step=1e-3)
    return speed_with(base, result.x, names)


def collect(measured_path: Path, device_kind: str) -> tuple[list[Point], SpeedConstants]:
    """Estimate the default suite and join it with the measured ok records by case id."""
    assumptions = assumptions_for(device_kind)
    measured = {r.case_id: r for r in read_records(measured_path) if r.status == "ok" and r.samples_per_s}
    tables: dict[str, object] = {}
    cases = load_suite("default")
    records = estimate_cases(cases, assumptions, on_profile=lambda case, profile: tables.__setitem__(case, profile.ops))
    points = []
    for case, record in zip(cases, records):
        m = measured.get(record.case_id)
        if m is None or tables.get(case) is None:
            continue
        points.append(Point(record.case_id, m.workload, m.scenario, m.micro_batch, m.accum_steps,
                            m.samples_per_s, tables[case], StepTimes(m.step_times_s or ())))
    return points, assumptions.speed()


def leave_one_workload_out(points: list[Point], rows: list[dict], base: SpeedConstants, key: str,
                           names: tuple[str, ...] = FITTED) -> dict[str, SpeedConstants]:
    """Fit the constants `names` without each workload in turn (the others kept at `base`'s) and
    predict its cases into `rows[i][key]`; the constants fitted without each workload."""
    constants = {}
    for workload in sorted({p.workload for p in points}):
        speed = fit([p for p in points if p.workload != workload], base, names)
        constants[workload] = speed
        for p, row in zip(points, rows):
            if p.workload == workload:
                row[key] = predict(p, speed)
    return constants


def errors(rows: list[dict], key: str) -> list[float]:
    return [r[key] / r["measured"] - 1.0 for r in rows]


def summary(rows: list[dict], key: str, points: list[Point], drift: float) -> dict[str, object]:
    """Median |error|, worst |error|, and per workload Spearman and the order of the pairs the
    measurements resolve (`steptime.pair_order`), of the `key` predictions."""
    errs = [abs(e) for e in errors(rows, key)]
    out: dict[str, object] = {"median_abs_error": statistics.median(errs), "worst_abs_error": max(errs),
                              "ratio_error": ratio_error([r["measured"] for r in rows], [r[key] for r in rows],
                                                         [r["workload"] for r in rows])}
    by_id = {p.case_id: p for p in points}
    for workload in sorted({r["workload"] for r in rows}):
        mine = [r for r in rows if r["workload"] == workload]
        out[f"spearman {workload}"] = spearman([r["measured"] for r in mine], [r[key] for r in mine])
        timed = [by_id[r["case_id"]] for r in mine]
        out[f"pairs {workload}"] = pair_order([p.times for p in timed], [p.micro_batch * p.accum_steps for p in timed],
                                              [r[key] for r in mine], drift)
    for bound in ("host", "device"):
        bound_errs = [abs(r[key] / r["measured"] - 1) for r in rows if r["bound"] == bound]
        if bound_errs:
            out[f"{bound}-bound"] = (len(bound_errs), statistics.median(bound_errs), max(bound_errs))
    return out


@dataclasses.dataclass
class Run:
    """One case measured in one process: its samples/s and step times (seconds)."""

    samples_per_s: float
    step_times: tuple[float, ...]


def runs_by_case(measured_path: Path, repeats: list[Path]) -> tuple[dict[str, list[Run]], int]:
    """Every ok run of each case in the measured file and the `repeats` files (each file one
    process), kept only when measured on the measured file's device: runs of another GPU are
    not the same reference. Also how many ok runs were left out for their device."""
    reference = {r.device_name for r in read_records(measured_path) if r.status == "ok"}
    runs: dict[str, list[Run]] = {}
    other_device = 0
    for path in [measured_path, *repeats]:
        for r in read_records(path):
            if r.status != "ok" or not r.samples_per_s or not r.step_times_s:
                continue
            if r.device_name not in reference:
                other_device += 1
                continue
            runs.setdefault(r.case_id, []).append(Run(r.samples_per_s, tuple(r.step_times_s)))
    return runs, other_device


def repeated_cases(runs: dict[str, list[Run]]) -> list[tuple[str, list[float]]]:
    """Cases measured more than once: each case id with the medians of its runs' step times."""
    return [(case, [StepTimes(run.step_times).median for run in mine]) for case, mine in runs.items() if len(mine) > 1]


def median_of_runs(points: list[Point], runs: dict[str, list[Run]], least: int = 3) -> list[Point]:
    """The points measured in at least `least` processes, each with the median of its runs'
    samples/s as the measurement and the step times of all its runs pooled: a reference less
    noisy than one run."""
    out = []
    for p in points:
        mine = runs.get(p.case_id, [])
        if len(mine) >= least:
            pooled = tuple(t for run in mine for t in run.step_times)
            out.append(dataclasses.replace(p, measured=statistics.median(run.samples_per_s for run in mine),
                                           times=StepTimes(pooled)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("measured", type=Path)
    parser.add_argument("--device-kind", default="h100")
    parser.add_argument("--constants", type=Path, default=DEFAULT_CONSTANTS,
                        help="speed_constants.json of benchmarks/gpu/speed_constants.py: the measured GEMM and "
                             f"convolution efficiencies (default {DEFAULT_CONSTANTS})")
    parser.add_argument("--repeats", type=Path, nargs="*", default=[],
                        help="files with cases of MEASURED measured again in other processes on the same device "
                             "(runs of another device are left out): their spread is the reference's own noise")
    args = parser.parse_args(argv)

    microbenchmarks = json.loads(args.constants.read_text())
    measured_constants = microbenchmarks["constants"]
    # Efficiencies are fractions of each device's own data-sheet peaks, so constants measured on
    # another GPU of the family can stand in for the calibration GPU's; the text says which.
    source = f"{args.constants}, measured on {microbenchmarks.get('device', 'an unnamed device')}"
    points, kind_base = collect(args.measured, args.device_kind)
    base = with_measured(kind_base, measured_constants, MEASURED)
    print(f"{len(points)} measured cases with op tables", file=sys.stderr)
    # The allowance for drift between cases that the report widens every ratio by.
    drift = typical_spread([p.times for p in points if len(p.times)]) or 0.0
    rows = [{"case_id": p.case_id, "workload": p.workload, "scenario": p.scenario, "micro_batch": p.micro_batch,
             "accum_steps": p.accum_steps, "measured": p.measured} for p in points]

    # Leave one workload out.
    held_constants = leave_one_workload_out(points, rows, base, "held_out_workload")
    # The same with the measured constants fitted too: what measuring them avoids.
    all_fitted = leave_one_workload_out(points, rows, base, "held_out_workload_all_fitted", FITTED + MEASURED)
    # Hold configurations out: GPT-2's accumulated cases, fitted without them.
    gpt2 = "gpt-gpt2"
    train = [p for p in points if not (p.workload == gpt2 and p.scenario == "accumulated")]
    speed_cfg = fit(train, base)
    for p, row in zip(points, rows):
        row["held_out_config"] = predict(p, speed_cfg) if (p.workload == gpt2 and p.scenario == "accumulated") else None
    # All cases (what the H100 kind ships), and the shipped constants as they are.
    speed_all = fit(points, base)
    shipped = assumptions_for(args.device_kind).speed()
    for p, row in zip(points, rows):
        row["fitted_on_all"] = predict(p, speed_all)
        row["shipped"] = predict(p, shipped)
        # What bounds the step, by the constants fitted on all cases.
        row["bound"] = predict_step_time(p.table, speed_all, p.accum_steps).bound

    leave_one_workload_out(points, rows, with_measured(base, measured_constants, DEVICE_SIDE), "device_measured",
                           HOST_SIDE)
    everything = with_measured(dataclasses.replace(base, step_host_seconds=0.0), measured_constants,
                               DEVICE_SIDE + ("host_op_seconds", "launch_seconds"))
    for p, row in zip(points, rows):
        row["microbenchmarks"] = predict(p, everything)
    without_gpt2 = all_fitted[gpt2]
    measured_blocks = [
        ("Held out: leave one workload out, the GEMM and convolution efficiencies and the kernel floor fitted "
         "too (not measured)",
         summary(rows, "held_out_workload_all_fitted", points, drift),
         f"Fitted without GPT-2 the GEMM efficiency comes out at {without_gpt2.flop_efficiency:.3g} (measured: "
         f"{base.flop_efficiency:.3g}): no other workload's step is GEMM-bound enough to pin it."),
        (f"Held out: leave one workload out, all four device constants measured ({source}), host costs fitted",
         summary(rows, "device_measured", points, drift), ""),
        (f"Every case held out: the constants its microbenchmarks measure ({source}), nothing fitted "
         "(no per-step host time: none measures it)", summary(rows, "microbenchmarks", points, drift), "")]
    runs, other_device = runs_by_case(args.measured, args.repeats)
    if other_device:
        print(f"left out {other_device} run(s) of --repeats measured on another device than {args.measured}",
              file=sys.stderr)
    steady = median_of_runs(points, runs)
    if len(steady) >= 2:
        # The same predictions against the median of several runs per case (those measured in
        # at least three processes): how much of the error is the reference's own noise.
        by_id = {p.case_id: p for p in steady}
        steady_rows = [dict(row, measured=by_id[row["case_id"]].measured) for row in rows if row["case_id"] in by_id]
        measured_blocks.append((f"Held out: leave one workload out, against the median of at least three runs per case "
                                f"({len(steady_rows)} cases measured in several processes)",
                                summary(steady_rows, "held_out_workload", steady, drift), ""))
    lowo = summary(rows, "held_out_workload", points, drift)
    cfg_rows = [r for r in rows if r["held_out_config"] is not None]
    cfg = summary(cfg_rows, "held_out_config", points, drift)
    fitted = summary(rows, "fitted_on_all", points, drift)
    repeats = repeated_cases(runs)
    reference = next(r for r in read_records(args.measured) if r.status == "ok")
    command = " ".join(["python benchmarks/steptime_validation.py", str(args.outdir), str(args.measured),
                        "--device-kind", args.device_kind]
                       + (["--constants", str(args.constants)] if args.constants != DEFAULT_CONSTANTS else [])
                       + (["--repeats", *map(str, args.repeats)] if args.repeats else []))
    measured_on = f"{reference.device_name} (torch {reference.torch_version})"
    write(args.outdir, rows, lowo, cfg, fitted, speed_all, held_constants, len(cfg_rows), drift, repeats,
          measured_blocks, source, command, measured_on)
    print("fitted on all cases: " + fitted_speed_line(speed_all, FITTED))
    print(f"speed_ratio_error (leave one workload out, 95% of pairs): {lowo['ratio_error']:.3f}")
    for name, s in (("leave one workload out", lowo), ("GPT-2 accumulated held out", cfg), ("fitted on all", fitted)):
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    return 0


def fitted_speed_line(speed: SpeedConstants, names: tuple[str, ...], quote: str = "") -> str:
    """'host_op_seconds = 2.72e-06, ...': the constants `names` of `speed`, 3 significant digits."""
    return ", ".join(f"{quote}{name}{quote} = {getattr(speed, name):.3g}" for name in names)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def write(outdir: Path, rows, lowo, cfg, fitted, speed_all, held_constants, n_cfg, drift, repeats,
          measured_blocks, source, command, measured_on) -> None:
    """The CSV (one row per case) and the Markdown summary."""
    outdir.mkdir(parents=True, exist_ok=True)
    columns = ["case_id", "workload", "scenario", "micro_batch", "accum_steps", "measured", "bound",
               "held_out_workload", "held_out_config", "fitted_on_all", "shipped"]
    columns += ["held_out_workload_all_fitted", "device_measured", "microbenchmarks"]
    with open(outdir / "steptime_vs_measured.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{r[k]:.1f}" if isinstance(r[k], float) else r[k]) for k in columns})

    def block(title: str, s: dict[str, object]) -> list[str]:
        lines = [f"**{title}**: median |error| {s['median_abs_error']:.1%}, worst {s['worst_abs_error']:.1%}; "
                 f"ratios of two configurations of one workload off by at most x{s['ratio_error']:.2f} in 95% of "
                 "pairs (each workload weighted equally)", ""]
        for bound in ("host", "device"):
            if f"{bound}-bound" in s:
                n, median, worst = s[f"{bound}-bound"]
                lines.append(f"- {n} {bound}-bound cases: median |error| {median:.1%}, worst {worst:.1%}")
        lines += ["", "| workload | Spearman | pairs the measurements resolve | of them in the measured order |",
                  "| --- | ---: | ---: | ---: |"]
        for key, rho in s.items():
            if key.startswith("spearman "):
                workload = key.removeprefix("spearman ")
                order = s[f"pairs {workload}"]
                share = "-" if not order.resolved else f"{order.agree} ({order.share:.0%})"
                lines.append(f"| {workload} | {rho:.3f} | {order.resolved} of {order.pairs} | {share} |")
        return lines + [""]

    lines = [f"# Predicted vs measured samples/s on an {measured_on.split(' (')[0]}", "",
             f"Made by `{command}` on a CPU-only machine "
             "(the step-time model of `accumbench/steptime.py` on the estimate meter's fake steps), against "
             f"the samples/s the cuda meter measured on {measured_on} (the median of each case's timed "
             "steps, one run per case in the measured file).", "",
             "Four constants are fitted (host time per dispatched op, per kernel launch, per optimizer "
             "step, fraction of peak bandwidth; host time per tensor of a foreach op stays 0: fitted too, "
             "it goes to its lower bound); the fractions of peak FLOP/s for GEMMs and attention "
             "and for convolutions and the least kernel time are measured by microbenchmarks "
             f"({source}: {fitted_speed_line(speed_all, MEASURED)}), batch norm's rate is the kind's "
             f"(`batch_norm_bandwidth` = {speed_all.batch_norm_bandwidth:.3g} bytes/s, measured on an H200 "
             "at the ConvNet's shapes); the peaks are the data sheet's. Targets: held-out "
             "median |error| <= 10%, worst <= 25%, Spearman >= 0.9 within each workload.", "",
             "Host- or device-bound is the model's verdict for the case (constants fitted on all cases). "
             "Spearman's rho ranks every pair of a workload's cases, also pairs whose measured order is a "
             "coin toss; the pair columns count only the pairs whose measured throughput ratio's 95% "
             f"interval excludes 1 after widening by the cases' typical spread ({drift:.1%}, as the report "
             "widens every ratio; `accumbench.steptime.pair_order`), and how many of those the "
             "prediction orders as measured.", ""]
    if repeats:
        lines += ["## The reference's own noise", "",
                  "The same case measured in separate processes (the default suite and the files of "
                  "`--repeats`): no prediction can be closer to one run than the runs are to each other.", "",
                  "| case | runs | median step times | spread (max / min - 1) |", "| --- | ---: | --- | ---: |"]
        for case, medians in repeats:
            times = ", ".join(f"{m * 1e3:.1f}" for m in medians)
            lines.append(f"| {case.rsplit('/norm-', 1)[0]} | {len(medians)} | {times} ms | "
                         f"{max(medians) / min(medians) - 1:.1%} |")
        lines.append("")
    lines += ["## Summary", ""]
    lines += block("Held out: leave one workload out", lowo)
    for title, result, note in measured_blocks:
        lines += block(title, result) + ([note, ""] if note else [])
    lines += block(f"Held out: GPT-2's {n_cfg} accumulated configurations (fitted on its large-batch cases "
                   "and the other workloads)", cfg)
    lines += block("In-sample: fitted on all cases (the constants the h100 kind ships)", fitted)
    lines += ["Constants fitted on all cases: " + fitted_speed_line(speed_all, FITTED, "`"),
              "", "Constants per left-out workload:", ""]
    for workload, speed in held_constants.items():
        lines.append(f"- without {workload}: " + fitted_speed_line(speed, FITTED))
    lines += ["", "## Per case", "",
              "| case | bound | measured | held out (workload) | err | held out (config) | err | fitted on all | err |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        hc = r["held_out_config"]
        lines.append(
            f"| {r['case_id'].rsplit('/norm-', 1)[0]} | {r['bound']} | {r['measured']:,.1f} | "
            f"{r['held_out_workload']:,.1f} | "
            f"{_pct(r['held_out_workload'] / r['measured'] - 1)} | {'-' if hc is None else f'{hc:,.1f}'} | "
            f"{_pct(None if hc is None else hc / r['measured'] - 1)} | {r['fitted_on_all']:,.1f} | "
            f"{_pct(r['fitted_on_all'] / r['measured'] - 1)} |")
    (outdir / "steptime_vs_measured.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
