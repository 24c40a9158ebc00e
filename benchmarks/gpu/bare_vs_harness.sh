#!/usr/bin/env bash
# The harness beside a bare hand-written loop, same GPT-2 case, alternated REPS times so that
# process-to-process noise (large for launch-bound micro-batches) shows up on both sides:
#   bash benchmarks/gpu/bare_vs_harness.sh OUTDIR [REPS]
set -euo pipefail
out=${1:?usage: bare_vs_harness.sh OUTDIR [REPS]}; reps=${2:-3}
mkdir -p "$out"
raw=$(mktemp -d)  # per-run files; only the summary goes to OUTDIR
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ab() { python3 -c 'import sys; from accumbench.cli import main; sys.argv[0] = "accumbench"; main()' "$@"; }
for shape in "8 4" "32 1"; do
  set -- $shape
  scenario=$([ "$2" = 1 ] && echo large-batch || echo accumulated)
  for rep in $(seq "$reps"); do
    python3 benchmarks/gpu/bare_loop.py --micro-batch "$1" --accum-steps "$2" --warmup 3 --steps 30 \
      --out "$raw/bare_${1}x${2}_$rep.json" >/dev/null
    ab run --device cuda --workload gpt --workload-opt size=gpt2 --scenario "$scenario" --amp bf16 \
      --micro-batch "$1" --accum-steps "$2" --warmup 3 --steps 30 --out "$raw/harness_${1}x${2}_$rep.jsonl" >/dev/null 2>&1
  done
done
python3 - "$raw" "$reps" "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
out, reps, dest = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rows = []
for shape in ("8x4", "32x1"):
    bare = [json.loads((out / f"bare_{shape}_{i}.json").read_text()) for i in range(1, reps + 1)]
    harness = [json.loads((out / f"harness_{shape}_{i}.jsonl").read_text().splitlines()[0]) for i in range(1, reps + 1)]
    bp = {b["peak_allocated"] for b in bare}; hp = {h["peak_allocated"] for h in harness}
    bt = [b["median_step_time_s"] for b in bare]; ht = [statistics.median(h["step_times_s"]) for h in harness]
    row = {"case": shape, "bare_peak": sorted(bp), "harness_peak": sorted(hp),
           "peak_diff_pct": (max(hp) / max(bp) - 1) * 100,
           "bare_median_ms": [round(t * 1e3, 2) for t in bt], "harness_median_ms": [round(t * 1e3, 2) for t in ht],
           "speed_diff_pct": (statistics.median(ht) / statistics.median(bt) - 1) * 100}
    rows.append(row)
    print(json.dumps(row))
(dest / "bare_vs_harness.json").write_text(json.dumps(rows, indent=1))
PY
