"""How often would the throughput gate fire on pure noise? Measure it.

Runs the same case N times, each in a fresh `accumbench run` process (as CI runs would), then
applies the throughput check to consecutive runs (1 vs 2, 2 vs 3, ...) and counts how often it
fires: that is the gate's false-positive rate on this machine. For comparison it also counts
the weaker rules the gate is built from (the rank test alone; rank test and tolerance), and
prints the spread of the run-to-run median changes, which is what the tolerance has to cover.

    python benchmarks/throughput_noise.py --runs 20                 # the tests' MLP case, CPU
    python benchmarks/throughput_noise.py --runs 200 --threads 1 --pin 0 --in-process  # the noise test's setup
    python benchmarks/throughput_noise.py --runs 20 --device cuda --workload gpt --workload-opt size=small \
        --micro-batch 8 --accum-steps 4

Not part of the test suite (it takes a minute or more); the suite's noise test is
`tests/test_gate_measured.py::test_two_runs_of_the_same_case_pass_the_throughput_gate`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from accumbench.gate import stats
from accumbench.gate.checks import REGRESSION, ThroughputCheck, Tolerance
from accumbench.records import read_records

HERE = Path(__file__).resolve().parent
DEFAULT_WORKLOAD = str(HERE.parent / "tests" / "workloads" / "leaky_mlp.py") + ":mlp_plain"


def measure(args: argparse.Namespace, out: Path) -> list[list[float]]:
    """Run the case `args.runs` times; return each run's step times.

    Each run is its own `accumbench run` process (as CI runs are), or with `--in-process` an
    invocation in this process, back to back (as the test suite's noise test does).
    """
    samples = []
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        if args.in_process:
            import torch

            torch.set_num_threads(args.threads)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})  # inherited by the subprocesses too
    # In-process, a throw-away run first takes the process's warm-up, as the noise test does.
    for i in range(-1 if args.in_process else 0, args.runs):
        path = out / f"run{i:02d}.jsonl"
        argv = [
            "run", "--device", args.device, "--workload", args.workload, "--scenario", args.scenario,
            "--micro-batch", args.micro_batch, "--accum-steps", args.accum_steps,
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(path),
        ]
        for opt in args.workload_opt:
            argv += ["--workload-opt", opt]
        if args.in_process:
            from click.testing import CliRunner

            from accumbench.cli import main as cli

            result = CliRunner().invoke(cli, argv)
            if result.exit_code != 0:
                raise SystemExit(result.output)
        else:
            cmd = [sys.executable, "-c", "from accumbench.cli import main; main()", *argv]
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (record,) = read_records(path)
        if i < 0:
            continue
        samples.append(list(record.step_times_s))
        print(f"run {i + 1:2d}/{args.runs}: median {statistics.median(record.step_times_s) * 1e3:8.3f} ms", flush=True)
    return samples


def false_positives(samples: list[list[float]], check: ThroughputCheck, pairs) -> tuple[int, int]:
    """(fired, compared): how many of the given (baseline, current) index pairs regress."""
    fired = sum(check.evaluate(samples[a], samples[b]).verdict == REGRESSION for a, b in pairs)
    return fired, len(pairs)


def main() -> None:
    """Parse arguments, measure, print the false-positive counts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workload", default=DEFAULT_WORKLOAD)
    parser.add_argument("--workload-opt", action="append", default=[])
    parser.add_argument("--scenario", default="accumulated")
    parser.add_argument("--micro-batch", default="16")
    parser.add_argument("--accum-steps", default="2")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for the runs (0: leave as is)")
    parser.add_argument("--in-process", action="store_true", help="run back to back in this process")
    parser.add_argument("--pin", type=int, default=None, help="pin the runs to this CPU")
    parser.add_argument("--tolerance", default="10%")
    parser.add_argument("--alpha", type=float, default=0.002)
    parser.add_argument("--save", help="also write every run's step times to this JSON file")
    args = parser.parse_args()

    tolerance = Tolerance.parse(args.tolerance).amount
    with tempfile.TemporaryDirectory() as tmp:
        samples = measure(args, Path(tmp))
    if args.save:
        Path(args.save).write_text(json.dumps({"args": vars(args), "step_times_s": samples}, indent=1))
    medians = [statistics.median(s) for s in samples]
    consecutive = [(i, i + 1) for i in range(len(samples) - 1)]
    all_pairs = list(itertools.permutations(range(len(samples)), 2))
    changes = [medians[b] / medians[a] - 1 for a, b in consecutive]
    print(f"\nrun-to-run change of the median step time: min {min(changes):+.1%}, "
          f"median {statistics.median(changes):+.1%}, max {max(changes):+.1%}")
    print(f"within-run spread (IQR/median), median over runs: "
          f"{statistics.median(stats.spread(s) for s in samples):.1%}")
    rules = {
        "rank test alone (p < alpha)": lambda a, b, p: p < args.alpha,
        f"rank test and median > {args.tolerance}": lambda a, b, p: p < args.alpha and _change(a, b) > tolerance,
    }
    check = ThroughputCheck.parse(args.tolerance, alpha=args.alpha)
    for label, rule in rules.items():
        fired = sum(rule(samples[a], samples[b], stats.mann_whitney_p(samples[a], samples[b])) for a, b in consecutive)
        print(f"{label:<45} fired {fired}/{len(consecutive)} consecutive pairs")
    fired, n = false_positives(samples, check, consecutive)
    fired_all, n_all = false_positives(samples, check, all_pairs)
    print(f"{'the gate (and beyond the runs scatter)':<45} fired {fired}/{n} consecutive pairs, "
          f"{fired_all}/{n_all} ordered pairs")


def _change(a: list[float], b: list[float]) -> float:
    return statistics.median(b) / statistics.median(a) - 1


if __name__ == "__main__":
    main()
