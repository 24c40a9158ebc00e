#!/usr/bin/env bash
# Issue 15's reference noise: the default suite's cases other than GPT-2 (the small GPT, both
# ConvNets, both multi-task layouts: 40 cases, the workloads whose rank correlations the
# step-time validation misses) measured again in three fresh processes, with the protocol of
# results/NVIDIA-H100-80GB-HBM3/default.jsonl (3 warm-up steps, 10 timed). One run per case
# cannot say whether a prediction or the measurement is off: the same GPT-2 case moved by 43%
# between processes on the H100. On a CPU afterwards, the validation compares its predictions
# with the median of the runs as well:
#   python benchmarks/steptime_validation.py OUTDIR results/NVIDIA-H100-80GB-HBM3/default.jsonl \
#       --repeats results/NVIDIA-H100-80GB-HBM3/validation/*.jsonl RUNS/repeat*.jsonl
# Only runs on an H100 join that reference (the validation leaves out runs of another device);
# on another GPU (an H200) the three runs still say how far these cases move between processes
# there, printed at the end.
#
#   bash benchmarks/gpu/steptime_repeats.sh OUTDIR              # on a CUDA machine, ~4 min
#   bash benchmarks/gpu/steptime_repeats.sh OUTDIR --dry-run    # CPU, tiny models: checks the script
# Writes OUTDIR/repeat1.jsonl .. repeat3.jsonl (one per process) and prints each case's spread.
set -euo pipefail
out=${1:?usage: steptime_repeats.sh OUTDIR [--dry-run]}
mode=${2:-cuda}
runs=3
[ "$mode" = "--dry-run" ] && runs=2
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ "$mode" != "--dry-run" ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for i in $(seq 1 $runs); do
  rm -f "$out/repeat$i.jsonl"
  # Each run in its own process: what differs between processes is what one run cannot see.
  python3 - "$out/repeat$i.jsonl" "$mode" <<'PY'
import dataclasses, sys, time
from pathlib import Path

import torch

from accumbench.cases import load_suite
from accumbench.records import append_record
from accumbench.runner import Runner

path, dry = Path(sys.argv[1]), sys.argv[2] == "--dry-run"
cases = [dataclasses.replace(c, warmup=3, steps=10) for c in load_suite("default")
         if c.options != (("size", "gpt2"),) and c.checkpoint == "none" and not c.compile]
if dry:  # the same selection on tiny models, few steps, small batches: proves the script runs
    cases = list(dict.fromkeys(dataclasses.replace(c, options=(("size", "tiny"),), amp="none", warmup=1, steps=2,
                                                   micro_batch=min(c.micro_batch, 4), accum_steps=min(c.accum_steps, 2))
                               for c in cases))
started = time.perf_counter()
runner = Runner(torch.device("cpu" if dry else "cuda"))
for record in runner.run(cases, sink=lambda r: append_record(path, r)):
    print(f"{record.case_id}: {record.status} samples/s={record.samples_per_s}", flush=True)
print(f"{len(cases)} case(s) in {time.perf_counter() - started:.0f} s -> {path}")
PY
done
python3 - "$out" <<'PY'
import statistics, sys
from pathlib import Path

from accumbench.records import read_records

runs = sorted(Path(sys.argv[1]).glob("repeat*.jsonl"))
speeds: dict[str, list[float]] = {}
for path in runs:
    for r in read_records(path):
        if r.status == "ok" and r.samples_per_s:
            speeds.setdefault(r.case_id, []).append(r.samples_per_s)
print(f"\nsamples/s in {len(runs)} processes (spread: max / min - 1):")
for case, values in speeds.items():
    print(f"  {case.rsplit('/norm-', 1)[0]}: {', '.join(f'{v:,.1f}' for v in values)} "
          f"(spread {max(values) / min(values) - 1:.1%})")
spreads = [max(v) / min(v) - 1 for v in speeds.values() if len(v) > 1]
if spreads:
    print(f"median spread {statistics.median(spreads):.1%}, worst {max(spreads):.1%} over {len(spreads)} cases")
PY
