#!/usr/bin/env bash
# GPU validation, part A (about 5 minutes on an H100):
#   bash benchmarks/gpu/run_validation_a.sh OUTDIR
# bare loop vs harness (issue 2), CUDA memory timelines (issue 8), the throughput gate's
# false-positive rate on repeated identical runs (issue 4). Each part writes straight into OUTDIR,
# so a call cut off at its time limit keeps the parts that finished.
set -uo pipefail
out=${1:?usage: run_validation_a.sh OUTDIR}
mkdir -p "$out"; work=$out
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ab() { python3 -c 'import sys; from accumbench.cli import main; sys.argv[0] = "accumbench"; main()' "$@"; }
step() { echo "=== $* ($(date +%T))"; }

step bare vs harness
bash benchmarks/gpu/bare_vs_harness.sh "$work/bare" 3

step timelines
mkdir -p "$work/timelines"
ab run --device cuda --workload gpt --workload-opt size=gpt2 --amp bf16 --micro-batch 8 --accum-steps 1,4 \
   --warmup 3 --steps 5 --timeline --out "$work/timelines/gpt2.jsonl"
ab run --device cuda --workload two-models --workload-opt size=small --amp bf16 --micro-batch 64 --accum-steps 1 \
   --warmup 3 --steps 5 --timeline --out "$work/timelines/two_models.jsonl"

step throughput noise
python3 benchmarks/throughput_noise.py --runs 10 --device cuda --workload gpt --workload-opt size=small \
   --micro-batch 8 --accum-steps 4 2>&1 | tee "$work/throughput_noise.txt" | tail -15

ls -la "$out"
