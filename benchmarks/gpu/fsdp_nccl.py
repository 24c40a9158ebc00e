"""FSDP2 accumulation with NCCL at world size 1 (issue 17): proves the CUDA path of `--parallel fsdp`.

Usage: python benchmarks/gpu/fsdp_nccl.py OUTDIR [--device cpu]     (a few minutes on an H100)
       python benchmarks/gpu/fsdp_nccl.py OUTDIR --estimate-only      (any machine: estimate and compare
                                                                       an OUTDIR/fsdp_nccl.jsonl measured before)

Runs `accumbench run --nproc-per-node 1 --parallel fsdp --device cuda` (torchrun, NCCL) on gpt
size=small in bf16 (FSDP's MixedPrecisionPolicy from --amp): large-batch 8 and 32, accumulated
8 x 4 with the gradient sync skipped until the last micro-step and with sync on every micro-step,
into OUTDIR/fsdp_nccl.jsonl; then `accumbench estimate --parallel fsdp --world-size 1` of the same
cases for the device's kind (from its name; h100 if unknown; cpu with --device cpu) into
OUTDIR/fsdp_estimate.jsonl. Prints measured vs predicted peaks, writes
OUTDIR/fsdp_nccl_summary.json and exits 1 when a case failed,
the backend is not the expected one, or a collective was counted: with one rank FSDP2 has nothing
to gather or scatter and issues none (measured on gloo; the estimate must say the same). With
--device cpu (a dry run of this script's logic: gloo, gpt tiny, no AMP) the estimate must also
equal the measurement to the byte. Multi-GPU numbers are not measured by this script (one GPU,
one rank); the 2-rank counts and memory relations are tested on gloo (tests/test_fsdp.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from accumbench.estimate_assumptions import kind_for_device_name

ACCUM = 4


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str]) -> int:
    cpu = "--device" in argv and argv[argv.index("--device") + 1] == "cpu"
    estimate_only = "--estimate-only" in argv
    args = [a for a in argv if a not in ("--device", "cpu", "--estimate-only")]
    if len(args) != 1:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    device, backend = ("cpu", "gloo") if cpu else ("cuda", "nccl")
    flags = (["--workload", "gpt", "--workload-opt", "size=tiny", "--micro-batch", "2", "--warmup", "1",
              "--steps", "2"] if cpu else
             ["--workload", "gpt", "--workload-opt", "size=small", "--amp", "bf16", "--micro-batch", "8",
              "--warmup", "3", "--steps", "10"])
    flags += ["--accum-steps", f"1,{ACCUM}"]
    measured, predicted = out / "fsdp_nccl.jsonl", out / "fsdp_estimate.jsonl"
    if not estimate_only:
        measured.unlink(missing_ok=True)
        _run([sys.executable, "-m", "accumbench", "run", "--nproc-per-node", "1", "--parallel", "fsdp",
              "--device", device, *flags, "--out", str(measured)])
    # The estimate runs on fake tensors: it needs no GPU, only the kind of the one measured.
    names = {json.loads(line)["device_name"] for line in measured.read_text().splitlines()}
    kind = "cpu" if cpu else kind_for_device_name(" ".join(names)) or "h100"
    predicted.unlink(missing_ok=True)
    estimate_flags = [f for f in flags]
    for knob in ("--warmup", "--steps"):  # the estimate runs one warm-up and one measured step
        i = estimate_flags.index(knob)
        del estimate_flags[i:i + 2]
    _run([sys.executable, "-m", "accumbench", "estimate", "--parallel", "fsdp", "--world-size", "1",
          "--device-kind", kind, *estimate_flags, "--out", str(predicted)])

    estimates = {r["case_id"]: r for r in map(json.loads, predicted.read_text().splitlines())}
    rows, ok = [], True
    print(f"\n{'case':<28} {'peak MiB':>9} {'predicted':>9} {'samples/s':>10} {'AG/step':>7} {'RS/step':>7} "
          f"{'units':>5} {'RS ms/step':>10}")
    for r in map(json.loads, measured.read_text().splitlines()):
        d = r["distributed"] or {}
        label = f"{r['scenario']} {r['micro_batch']}x{r['accum_steps']} " + ("nosync" if d.get("no_sync") else "sync")
        if r["status"] != "ok":
            print(f"{label:<28} {r['status']}: {r['error']}")
            ok = False
            continue
        expected = 0  # world size 1: FSDP2 skips its collectives
        estimate = estimates.get(r["case_id"], {})
        ok &= d["reducescatters_per_step"] == d["allgathers_per_step"] == expected
        ok &= d["backend"] == backend and d["parallel"] == "fsdp"
        ok &= estimate.get("distributed", {}).get("reducescatters_per_step") == expected
        if cpu:
            ok &= estimate.get("peak_allocated") == r["peak_allocated"]
        rows.append({"case_id": r["case_id"], "peak_allocated": r["peak_allocated"],
                     "predicted_peak_allocated": estimate.get("peak_allocated"),
                     "samples_per_s": r["samples_per_s"], "allgathers_per_step": d["allgathers_per_step"],
                     "reducescatters_per_step": d["reducescatters_per_step"],
                     "expected_reducescatters_per_step": expected, "fsdp_units": d["fsdp_units"],
                     "reducescatter_time_s_per_step": d["reducescatter_time_s_per_step"],
                     "allgather_time_s_per_step": d["allgather_time_s_per_step"], "device_name": r["device_name"]})
        print(f"{label:<28} {r['peak_allocated'] / 2**20:>9.2f} {(estimate.get('peak_allocated') or 0) / 2**20:>9.2f} "
              f"{r['samples_per_s']:>10.1f} {d['allgathers_per_step']:>7g} {d['reducescatters_per_step']:>7g} "
              f"{d['fsdp_units']:>5} {d['reducescatter_time_s_per_step'] * 1e3:>10.3f}")
    (out / "fsdp_nccl_summary.json").write_text(json.dumps({"ok": ok, "device": device, "rows": rows}, indent=2))
    print(f"\nno collectives at world size 1 (and, on cpu, estimate == measured): {ok}; wrote {measured}, "
          f"{predicted}, {out / 'fsdp_nccl_summary.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
