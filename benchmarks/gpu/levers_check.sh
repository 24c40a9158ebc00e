#!/usr/bin/env bash
# Issue 16's GPU check: the default suite's activation-checkpointing and torch.compile cases
# (GPT-2 small, bf16), with their eager twins (same micro-batch and accumulation), on CUDA;
# then the memory and throughput each lever costs or saves, and the compile times.
#   bash benchmarks/gpu/levers_check.sh OUTDIR                 # on a CUDA machine
#   bash benchmarks/gpu/levers_check.sh OUTDIR --dry-run       # CPU, gpt tiny, no amp: checks the script
set -euo pipefail
out=${1:?usage: levers_check.sh OUTDIR [--dry-run]}
mode=${2:-cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$mode" != "--dry-run" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
python3 - "$out" "$mode" <<'PY'
import dataclasses, statistics, sys, time
from pathlib import Path

import torch

from accumbench.cases import load_suite
from accumbench.records import append_record, read_records
from accumbench.runner import Runner

out, mode = Path(sys.argv[1]), sys.argv[2]
dry = mode == "--dry-run"
print("torch", torch.__version__, "cuda", torch.version.cuda)
levered = [c for c in load_suite("default") if c.checkpoint != "none" or c.compile]
eager = {dataclasses.replace(c, checkpoint="none", compile=False) for c in levered}
cases = sorted(eager, key=lambda c: (c.scenario, c.micro_batch, c.accum_steps)) + levered
if dry:  # the same selection on a tiny model, few steps, small batches: proves the script runs
    small = {8: 2, 32: 4, 64: 4, 128: 8, 256: 8}
    cases = [dataclasses.replace(c, options=(("size", "tiny"),), amp="none", warmup=1, steps=2,
                                 micro_batch=small.get(c.micro_batch, 2))
             for c in cases if c.micro_batch <= 64]
    cases = list(dict.fromkeys(cases))
path = out / ("levers-dry-run.jsonl" if dry else "levers.jsonl")
path.unlink(missing_ok=True)
runner = Runner(torch.device("cpu" if dry else "cuda"))
started = time.perf_counter()
for record in runner.run(cases, sink=lambda r: append_record(path, r)):
    print(f"{record.case_id}: {record.status} peak={record.peak_allocated} "
          f"samples/s={record.samples_per_s} compile_s={record.compile_time_s} {record.error or ''}")
print(f"{len(cases)} case(s) in {time.perf_counter() - started:.0f} s -> {path}")

records = {r.case_id: r for r in read_records(path)}
gib = 2**30
print("\nlever vs eager at the same micro-batch x steps (peak GiB, samples/s, compile s):")
for r in read_records(path):
    if r.checkpoint == "none" and not r.compile:
        continue
    twin = r.case_id.rsplit("/", 1)[0]
    base = records.get(twin)
    if base is None or r.status != "ok" or base.status != "ok":
        print(f"  {r.case_id}: {r.status}; eager twin {base.status if base else 'missing'}")
        continue
    speed = (r.samples_per_s / base.samples_per_s - 1) * 100 if r.samples_per_s and base.samples_per_s else float("nan")
    print(f"  {r.case_id.split('/', 1)[1]}: peak {base.peak_allocated / gib:.2f} -> {r.peak_allocated / gib:.2f} "
          f"({(r.peak_allocated - base.peak_allocated) / gib:+.2f}); samples/s {base.samples_per_s:.1f} -> "
          f"{r.samples_per_s:.1f} ({speed:+.1f}%)" + (f"; compile {r.compile_time_s:.1f} s" if r.compile else ""))
failed = [r for r in records.values() if r.status == "error"]
sys.exit(1 if failed else 0)
PY
