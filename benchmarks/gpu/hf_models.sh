#!/usr/bin/env bash
# Hugging Face models from the committed configs on CUDA, and the estimate of the same cases:
# GPT-2 small (seq 512), Qwen2.5-0.5B (seq 1024) and Llama-3.2-1B (seq 2048), suite
# benchmarks/gpu/hf_models.toml, measured with the cuda meter, then estimated for this GPU's
# device kind and joined into OUTDIR/estimate_vs_measured.{md,csv} (estimate_vs_measured.py,
# which also plans and runs its GPT-2 check), with checkpointed Llama and LoRA GPT-2 cases. About
# 12 minutes on an H100.
#   bash benchmarks/gpu/hf_models.sh OUTDIR          # on the GPU machine
#   bash benchmarks/gpu/hf_models.sh OUTDIR --tiny   # CPU dry run: tiny configs, cpu meter vs cpu estimate
# Needs transformers (pip install -e '.[hf]'). Exit 1 when a case's estimate is off by more than 3%.
set -euo pipefail
out=${1:?usage: hf_models.sh OUTDIR [--tiny]}; mode=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ab() { python3 -c 'import sys; from accumbench.cli import main; sys.argv[0] = "accumbench"; main()' "$@"; }
if [ "$mode" = --tiny ]; then
  suite=benchmarks/gpu/hf_models_tiny.toml; device=cpu; kind=(--device-kind cpu)
else
  suite=benchmarks/gpu/hf_models.toml; device=cuda; kind=()
fi
ab run --device "$device" --suite "$suite" --out "$out/measured.jsonl" --overwrite
python3 benchmarks/gpu/estimate_vs_measured.py "$out" "$out/measured.jsonl" --suite "$suite" "${kind[@]}"
