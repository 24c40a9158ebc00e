#!/usr/bin/env bash
# Issue 18's GPU check: one mixture-of-experts model (OLMoE-shaped, ~350M parameters, grouped_mm
# experts) estimated for this GPU's device kind and measured on CUDA; both written.
#
#   bash benchmarks/gpu/moe_check.sh OUT [DEVICE_KIND]     # on the GPU machine (~5 min on an H100/H200)
#   bash benchmarks/gpu/moe_check.sh OUT --dry-run         # CPU: tiny OLMoE, cpu meter vs --device-kind cpu
#
# Writes OUT/estimate.jsonl (meter estimate), OUT/measured.jsonl (meter cuda, or cpu in a dry run)
# and OUT/moe_check.md: estimated vs measured peak per case. Exit 1 when a case is off by more
# than 3% (the estimate's target on CUDA; a dry run must be byte-equal).
set -euo pipefail
# The GPU machine has no `accumbench` on its PATH: run the checkout's package with its python3.
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
accumbench() { python3 -m accumbench "$@"; }
OUT=${1:?usage: moe_check.sh OUT [DEVICE_KIND|--dry-run]}
MODE=${2:-h200}
mkdir -p "$OUT"
if [ "$MODE" = "--dry-run" ]; then
    DEVICE=cpu; KIND=cpu; SIZE=tiny; SEQ=32; MB=2; AMP=none; TOL=0
else
    DEVICE=cuda; KIND=$MODE; SIZE=moe-350m; SEQ=1024; MB=4,8; AMP=bf16; TOL=0.03
fi
FLAGS=(--workload benchmarks/zoo.py:build --workload-opt model_type=olmoe --workload-opt "size=$SIZE"
       --workload-opt "seq_len=$SEQ" --micro-batch "$MB" --accum-steps 1,4 --amp "$AMP"
       --scenario large-batch --scenario accumulated)
accumbench estimate --device-kind "$KIND" "${FLAGS[@]}" --out "$OUT/estimate.jsonl"
accumbench run --device "$DEVICE" "${FLAGS[@]}" --out "$OUT/measured.jsonl"
python3 - "$OUT" "$TOL" <<'PY'
import sys
from pathlib import Path
from accumbench.records import read_records
out, tol = Path(sys.argv[1]), float(sys.argv[2])
est = {r.case_id: r for r in read_records(out / "estimate.jsonl")}
lines = ["| case | status | estimated peak (B) | measured peak (B) | error |", "|---|---|---|---|---|"]
bad = 0
for m in read_records(out / "measured.jsonl"):
    e = est.get(m.case_id)
    if e is None or m.status != "ok" or e.status != "ok":
        lines.append(f"| {m.case_id} | measured {m.status}, estimate {e.status if e else 'missing'} | - | - | - |")
        bad += m.status == "ok"
        continue
    err = (e.peak_allocated - m.peak_allocated) / m.peak_allocated
    bad += abs(err) > tol
    lines.append(f"| {m.case_id} | ok | {e.peak_allocated:,} | {m.peak_allocated:,} | {err:+.2%} |")
(out / "moe_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(1 if bad else 0)
PY
