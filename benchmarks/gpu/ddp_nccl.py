"""DDP accumulation on one GPU with NCCL (world size 1): proves the CUDA path of `--distributed`.

Usage: python benchmarks/gpu/ddp_nccl.py OUTDIR        (about 1 minute on an H100)

Runs, under `torchrun --standalone --nproc-per-node 1`, `accumbench run --distributed --device
cuda --timeline` on gpt size=small (bf16): large-batch 8 and 32, and accumulated 8 x 4 with and
without `no_sync()`, writing OUTDIR/ddp_nccl.jsonl (and its .timelines.jsonl); then the same
cases without DDP (OUTDIR/single.jsonl) so the DDP overhead (bucket buffers, all-reduce time)
can be read off. Prints a table, writes OUTDIR/ddp_nccl_summary.json, and exits 1 when the
all-reduce counts are not `buckets` per step with no_sync and `4 x buckets` without, or a record
lacks its timeline. Multi-GPU numbers are not measured by this script (one GPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CASE_FLAGS = ["--workload", "gpt", "--workload-opt", "size=small", "--amp", "bf16", "--micro-batch", "8",
              "--accum-steps", "1,4", "--warmup", "3", "--steps", "10"]
ACCUM = 4


def _run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    ddp, single = out / "ddp_nccl.jsonl", out / "single.jsonl"
    for path in (ddp, single):
        path.unlink(missing_ok=True)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "accumbench",
          "run", "--distributed", "--device", "cuda", *CASE_FLAGS, "--timeline", "--out", str(ddp)])
    _run([sys.executable, "-m", "accumbench", "run", "--device", "cuda", *CASE_FLAGS, "--out", str(single)])

    ddp_records = [json.loads(line) for line in ddp.read_text().splitlines()]
    single_records = {(r["scenario"], r["micro_batch"], r["accum_steps"]): r
                      for r in map(json.loads, single.read_text().splitlines())}
    rows, ok = [], True
    print(f"\n{'case':<34} {'peak MiB':>9} {'no-DDP MiB':>10} {'samples/s':>10} {'no-DDP':>8} "
          f"{'AR/step':>7} {'buckets':>7} {'AR ms/step':>10}")
    for r in ddp_records:
        d = r["distributed"] or {}
        base = single_records.get((r["scenario"], r["micro_batch"], r["accum_steps"]), {})
        label = f"{r['scenario']} {r['micro_batch']}x{r['accum_steps']} " + ("no_sync" if d.get("no_sync") else "sync")
        if r["status"] != "ok":
            print(f"{label:<34} {r['status']}: {r['error']}")
            ok = False
            continue
        expected = d["buckets"] * (ACCUM if r["scenario"] == "accumulated" and not d["no_sync"] else 1)
        ok &= d["allreduces_per_step"] == expected and d["backend"] == "nccl" and r["meter"] == "cuda"
        ok &= bool(r.get("timeline"))  # the CUDA timeline path under DDP ran too
        rows.append({"case_id": r["case_id"], "peak_allocated": r["peak_allocated"],
                     "single_process_peak_allocated": base.get("peak_allocated"),
                     "samples_per_s": r["samples_per_s"], "single_process_samples_per_s": base.get("samples_per_s"),
                     "allreduces_per_step": d["allreduces_per_step"], "expected_allreduces_per_step": expected,
                     "buckets": d["buckets"], "allreduce_time_s_per_step": d["allreduce_time_s_per_step"],
                     "device_name": r["device_name"]})
        print(f"{label:<34} {r['peak_allocated'] / 2**20:>9.1f} "
              f"{(base.get('peak_allocated') or 0) / 2**20:>10.1f} {r['samples_per_s']:>10.1f} "
              f"{base.get('samples_per_s') or 0:>8.1f} {d['allreduces_per_step']:>7g} {d['buckets']:>7} "
              f"{d['allreduce_time_s_per_step'] * 1e3:>10.3f}")
    (out / "ddp_nccl_summary.json").write_text(json.dumps({"ok": ok, "rows": rows}, indent=2))
    print(f"\nall-reduce counts as expected: {ok}; wrote {ddp}, {single}, {out / 'ddp_nccl_summary.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
