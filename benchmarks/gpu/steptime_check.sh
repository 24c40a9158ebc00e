#!/usr/bin/env bash
# Issue 15's GPU check: predict step times with no GPU, then measure the same 6 configurations
# (none of them in the calibration set, results/NVIDIA-H100-80GB-HBM3/default.jsonl) and write both.
#   bash benchmarks/gpu/steptime_check.sh OUTDIR [DEVICE_KIND]        # on a CUDA machine, ~3 min
#   bash benchmarks/gpu/steptime_check.sh OUTDIR h100 --dry-run       # CPU only: a tiny MLP, cpu meter
# Writes OUTDIR/predicted.jsonl (estimate meter), OUTDIR/measured.jsonl (cuda meter),
# OUTDIR/steptime_check.md/.csv (predicted vs measured samples/s per case, median and worst
# |error|), OUTDIR/norm_kernels.csv (BatchNorm vs GroupNorm kernel times: the largest miss) and
# OUTDIR/speed_constants.json (the model's constants measured by microbenchmarks).
# DEVICE_KIND (h100, h200, a100) picks the constants; default: from the GPU's name, else h100.
set -euo pipefail
out=${1:?usage: steptime_check.sh OUTDIR [DEVICE_KIND] [--dry-run]}
kind=${2:-}
dry=${3:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ab() { python3 -c 'import sys; from accumbench.cli import main; sys.argv[0] = "accumbench"; main()' "$@"; }
suite="$out/steptime_check.toml"
if [ "$dry" = "--dry-run" ]; then
  device=cpu
  cat > "$suite" <<'TOML'
description = "dry run of the step-time check: a tiny MLP on the CPU"
[defaults]
warmup = 1
steps = 2
[[group]]
workload = "mlp"
options = { size = "tiny" }
scenarios = ["large-batch", "accumulated"]
micro_batch = [3, 6]
accum_steps = [1, 5]
TOML
else
  device=cuda
  if [ -z "$kind" ]; then
    kind=$(python3 -c 'import torch; from accumbench.estimate_assumptions import kind_for_device_name as k; print(k(torch.cuda.get_device_name()) or "h100")')
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  # Six configurations outside the calibration set (benchmarks/gpu/steptime_check.toml); their
  # predictions were committed before any was measured: results/estimate-vs-h100/preregistered/.
  cp benchmarks/gpu/steptime_check.toml "$suite"
fi
kind=${kind:-h100}
ab estimate --suite "$suite" --device-kind "$kind" --out "$out/predicted.jsonl"
rm -f "$out/measured.jsonl"
ab run --device "$device" --suite "$suite" --out "$out/measured.jsonl"
python3 benchmarks/gpu/norm_kernels.py "$out" --device "$device"
# The model's constants measured one at a time; on a CPU afterwards:
#   python benchmarks/steptime_validation.py OUTDIR results/NVIDIA-H100-80GB-HBM3/default.jsonl --constants "$out/speed_constants.json"
python3 benchmarks/gpu/speed_constants.py "$out" --device "$device" ${kind:+--device-kind "$kind"}
python3 - "$out" "$kind" <<'PY'
import csv, statistics, sys
from pathlib import Path
from accumbench.records import read_records
out, kind = Path(sys.argv[1]), sys.argv[2]
predicted = {r.case_id: r for r in read_records(out / "predicted.jsonl")}
# The predictions committed before anything was measured (none for the dry run's cases).
early = Path(f"results/estimate-vs-h100/preregistered/steptime_check_{kind}.jsonl")
preregistered = {r.case_id: r.samples_per_s for r in read_records(early)} if early.exists() else {}
rows = []
for m in read_records(out / "measured.jsonl"):
    p = predicted.get(m.case_id)
    if m.status != "ok" or p is None or not p.samples_per_s or not m.samples_per_s:
        print(f"skipped {m.case_id}: measured {m.status}, predicted {p.status if p else 'missing'}")
        continue
    rows.append({"case_id": m.case_id, "measured": m.samples_per_s, "predicted": p.samples_per_s,
                 "error": p.samples_per_s / m.samples_per_s - 1,
                 "preregistered": preregistered.get(m.case_id)})
with open(out / "steptime_check.csv", "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=["case_id", "measured", "predicted", "error", "preregistered"])
    w.writeheader()
    w.writerows(rows)
errors = [abs(r["error"]) for r in rows]
lines = [f"# Predicted vs measured samples/s ({len(rows)} cases not in the calibration set)", "",
         f"median |error| {statistics.median(errors):.1%}, worst {max(errors):.1%}" if rows else "no case", "",
         "| case | measured | predicted | error | predicted before measuring |", "| --- | ---: | ---: | ---: | ---: |"]
lines += [f"| {r['case_id']} | {r['measured']:,.1f} | {r['predicted']:,.1f} | {r['error']:+.1%} | "
          f"{'-' if r['preregistered'] is None else format(r['preregistered'], ',.1f')} |" for r in rows]
(out / "steptime_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
