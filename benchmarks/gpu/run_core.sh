#!/usr/bin/env bash
# The core's GPU validation (issue 2), in one call on a CUDA machine:
#   bash benchmarks/gpu/run_core.sh OUTDIR
# 1. the default suite; 2. the same case in two fresh processes (peaks must repeat to the byte);
# 3. a bare hand-written loop beside the harness for two GPT-2 cases (benchmarks/gpu/bare_vs_harness.sh).
set -euo pipefail
out=${1:?usage: run_core.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ab() { python3 -c 'import sys; from accumbench.cli import main; sys.argv[0] = "accumbench"; main()' "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

start=$(date +%s)
ab run --device cuda --suite default --out "$out/default.jsonl"
echo "default suite: $(( $(date +%s) - start )) s"

for i in 1 2; do
  ab run --device cuda --workload gpt --workload-opt size=gpt2 --scenario accumulated --amp bf16 \
     --micro-batch 8 --accum-steps 4 --warmup 3 --steps 20 --out "$out/repeat$i.jsonl"
done

bash benchmarks/gpu/bare_vs_harness.sh "$out" 3
python3 - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
r1, r2 = (json.loads((out / f"repeat{i}.jsonl").read_text().splitlines()[0]) for i in (1, 2))
print(f"repeat: peak {r1['peak_allocated']} vs {r2['peak_allocated']} bytes "
      f"({'identical' if r1['peak_allocated'] == r2['peak_allocated'] else 'DIFFERENT'}); "
      f"median step {statistics.median(r1['step_times_s'])*1e3:.2f} vs {statistics.median(r2['step_times_s'])*1e3:.2f} ms")
PY
