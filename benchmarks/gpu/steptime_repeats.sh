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
# Only runs on an H100 join that reference (the validation leaves out runs of another device).
# On another GPU, --reference makes that GPU's own reference instead: the first process measures
# the whole default suite (GPT-2 too, OUTDIR/default.jsonl, ~5 min on an H100), the other two
# the 40 cases again (OUTDIR/repeat2.jsonl, repeat3.jsonl); then on a CPU
#   python benchmarks/steptime_validation.py OUTDIR/validation OUTDIR/default.jsonl \
#       --device-kind h200 --repeats OUTDIR/repeat*.jsonl
#
#   bash benchmarks/gpu/steptime_repeats.sh OUTDIR [--reference]   # on a CUDA machine, ~4 min (~7)
#   bash benchmarks/gpu/steptime_repeats.sh OUTDIR --dry-run [--reference]   # CPU, tiny models
# Writes OUTDIR/repeat1.jsonl .. repeat3.jsonl (one per process; default.jsonl in place of
# repeat1 with --reference) and prints each case's spread.
set -euo pipefail
out=${1:?usage: steptime_repeats.sh OUTDIR [--dry-run] [--reference]}
shift
mode=cuda reference=""
for arg in "$@"; do
  case $arg in
    --dry-run) mode=--dry-run ;;
    --reference) reference=1 ;;
    *) echo "steptime_repeats.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
runs=3
[ "$mode" = "--dry-run" ] && [ -z "$reference" ] && runs=2
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ "$mode" != "--dry-run" ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for i in $(seq 1 $runs); do
  path="$out/repeat$i.jsonl" whole=""
  if [ -n "$reference" ] && [ "$i" = 1 ]; then path="$out/default.jsonl" whole=1; fi
  rm -f "$path"
  # Each run in its own process: what differs between processes is what one run cannot see.
  python3 - "$path" "$mode" "$whole" <<'PY'
import dataclasses, sys, time
from pathlib import Path

import torch

from accumbench.cases import load_suite
from accumbench.records import append_record
from accumbench.runner import Runner

path, dry, whole = Path(sys.argv[1]), sys.argv[2] == "--dry-run", bool(sys.argv[3])
cases = [dataclasses.replace(c, warmup=3, steps=10) for c in load_suite("default")
         if (whole or c.options != (("size", "gpt2"),)) and c.checkpoint == "none" and not c.compile]
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

runs = sorted(Path(sys.argv[1]).glob("repeat*.jsonl")) + sorted(Path(sys.argv[1]).glob("default.jsonl"))
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
