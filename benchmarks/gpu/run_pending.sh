#!/usr/bin/env bash
# Every pending GPU check, in priority order, each one time-boxed, in one device call:
#
#   bash benchmarks/gpu/run_pending.sh OUTDIR [BUDGET_S] [CHECK ...]   # on the GPU machine
#   bash benchmarks/gpu/run_pending.sh OUTDIR 900 --dry-run issue12 fsdp   # CPU: the scripts' own dry runs
#
# BUDGET_S (default 540: one device call may run 600 s) is the wall time for the whole call; a
# check whose expected time exceeds what is left is skipped and listed as pending, so a second
# call can take the rest (name the checks to run). Each check writes under OUTDIR/<check>/ and
# its log to OUTDIR/<check>.log; OUTDIR/pending.txt lists what ran, its exit code, and what did
# not run. Commit OUTDIR under results/<device name>/ with a note of what was run.
#
# Checks still pending, run by default in this order (expected seconds, by their authors; actual
# on the H200 of 2026-11-30 where it ran):
#   fakekernels 20  the estimate's fake kernels vs CUDA's real ones: gradient layouts, reduced
#                 losses' storage, each call's internal scratch (fake_kernels_cuda.py; session 11)
#   optstep   60  the optimizer step alone vs the model's ops for it       (issue 15, open)
#   constants 40  the model's device constants by microbenchmarks, now with GPT-2's attention
#                 (issue 15: the GEMM and convolution efficiencies the h100 kind uses)
#   repeats  240  the 40 non-GPT-2 cases of the default suite in 3 processes (issue 15: the
#                 reference's own noise, for the validation's --repeats). On a GPU other than
#                 an H100 (420 s): that GPU's own reference instead, the whole default suite
#                 once and the 40 cases twice more (steptime_repeats.sh --reference); then on
#                 a CPU: python benchmarks/steptime_validation.py OUTDIR/repeats/validation \
#                 OUTDIR/repeats/default.jsonl --device-kind h200 --repeats OUTDIR/repeats/repeat*.jsonl
#   levers   240  default suite's checkpoint and compile cases again: the H200's compile rows
#                 after the first were eager steps (dynamo, once run under the FLOP counter's
#                 dispatch mode, stayed eager; found 2026-12-01, now reset before each compiled case)
#   core     300  bare loop vs harness x3, CUDA timelines, noise rate     (issues 2, 4, 8; the H200
#                 call was cut off in the noise part after 306 s)
#   hf       600  GPT-2 small, Qwen2.5-0.5B, Llama-3.2-1B vs estimate     (issue 14)
#   adaptive 600  the default suite under adaptive timing (< 10 min?)     (issue 13)
# Done on the H200 (results/NVIDIA-H200/), run again only when named:
#   steptime 210  6 new configs vs committed predictions, BN/GN kernels, constants (issue 15; 62 s)
#   issue12   60  results file, session, NaN check and lock on CUDA       (issue 12; 42 s)
#   ddp       60  NCCL DDP at world size 1 with timelines                 (issue 7/8; 30 s)
#   fsdp     120  NCCL FSDP2 at world size 1, vs its estimate             (issue 17; 31 s)
#   moe      300  OLMoE-shaped MoE estimated and measured                 (issue 18; measured alone, 43 s)
set -uo pipefail
out=${1:?usage: run_pending.sh OUTDIR [BUDGET_S] [--dry-run] [CHECK ...]}; shift
budget=540
if [[ ${1:-} =~ ^[0-9]+$ ]]; then budget=$1; shift; fi
dry=""
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
start=$(date +%s)
order=(fakekernels optstep constants repeats levers core hf adaptive)
known=("${order[@]}" steptime issue12 ddp fsdp moe)
declare -A expected=([fakekernels]=20 [optstep]=60 [constants]=40 [repeats]=240 [issue12]=60 [ddp]=60 [fsdp]=120 [steptime]=210 [moe]=300 [levers]=240 [core]=300
                     [hf]=600 [adaptive]=600)
wanted=("$@"); [ ${#wanted[@]} -eq 0 ] && wanted=("${order[@]}")
for name in "${wanted[@]}"; do
  [ -n "${expected[$name]:-}" ] || { echo "unknown check $name (known: ${known[*]})" >&2; exit 2; }
done

command_for() {  # the check's command line, on CUDA or as its own CPU dry run
  local d=$out/$1
  case $1 in
    fakekernels) echo "python3 benchmarks/gpu/fake_kernels_cuda.py $d ${dry:+--device cpu}" ;;
    optstep)  echo "python3 benchmarks/gpu/optimizer_step.py $d ${dry:+--device cpu}" ;;
    constants) echo "python3 benchmarks/gpu/speed_constants.py $d ${dry:+--device cpu}" ;;
    repeats)  echo "bash benchmarks/gpu/steptime_repeats.sh $d ${dry:+--dry-run} ${own_reference:+--reference}" ;;
    issue12)  echo "python3 benchmarks/gpu/issue12_results_session.py $d ${dry:+--device cpu}" ;;
    ddp)      echo "python3 benchmarks/gpu/ddp_nccl.py $d" ;;
    fsdp)     echo "python3 benchmarks/gpu/fsdp_nccl.py $d ${dry:+--device cpu}" ;;
    steptime) echo "bash benchmarks/gpu/steptime_check.sh $d ${dry:+h100 --dry-run}" ;;
    moe)      echo "bash benchmarks/gpu/moe_check.sh $d ${dry:+--dry-run}" ;;
    levers)   echo "bash benchmarks/gpu/levers_check.sh $d ${dry:+--dry-run}" ;;
    core)     echo "bash benchmarks/gpu/run_validation_a.sh $d" ;;
    hf)       echo "bash benchmarks/gpu/hf_models.sh $d ${dry:+--tiny}" ;;
    adaptive) echo "env OUT=$d bash benchmarks/gpu/issue13_adaptive_timing.sh ${dry:+--dry-run}" ;;
  esac
}

[ -z "$dry" ] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
                   python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } \
  | tee "$out/device.txt"
# Repeats join the committed H100 reference only when measured on an H100; elsewhere the check
# measures this GPU's own reference (the whole default suite once), which takes longer.
own_reference=""
if ! grep -q "H100" "$out/device.txt" 2>/dev/null; then own_reference=1; expected[repeats]=420; fi
: > "$out/pending.txt"
for name in "${wanted[@]}"; do
  left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -lt "${expected[$name]}" ]; then
    echo "$name: not run (expects ${expected[$name]} s, $left s left)" | tee -a "$out/pending.txt"
    continue
  fi
  if [ -n "$dry" ] && { [ "$name" = ddp ] || [ "$name" = core ]; }; then
    echo "$name: not run (no CPU dry run: needs CUDA)" | tee -a "$out/pending.txt"
    continue
  fi
  cmd=$(command_for "$name")
  echo "=== $name ($(date +%T), $left s left): $cmd"
  mkdir -p "$out/$name"
  t0=$(date +%s)
  timeout --kill-after=10 "$left" $cmd > "$out/$name.log" 2>&1
  rc=$?
  tail -5 "$out/$name.log"
  echo "$name: exit $rc in $(( $(date +%s) - t0 )) s ($cmd)" | tee -a "$out/pending.txt"
done
echo "--- $out/pending.txt"; cat "$out/pending.txt"
