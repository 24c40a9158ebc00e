"""Issue 12 on CUDA: the run session, results file and NaN check on the GPU path.

Usage: python benchmarks/gpu/issue12_results_session.py OUTDIR [--device cuda|cpu]
(about 1 minute on an H100; --device cpu is the dry run that proves the script itself)

Checks, exiting 1 with the failed check named:
1. `accumbench run` of three tiny gpt cases (large batch 4 and 8, 4 x 2) writes ok records carrying `seed` (the CUDA meter's
   records, the pinned host batches and the loss check's one sync per case on the device);
2. `--resume` with another `--steps` is refused (exit 2) and measures nothing;
3. a plug-in whose second micro-batch holds a NaN gives an `error` record naming
   "micro-step 2 of 3" and keeping the traceback (the isfinite check on CUDA tensors);
4. `--nproc-per-node 1` (NCCL on CUDA, gloo on the CPU) writes through the same session, and a
   second launch while the first's lock is held is refused naming the holder.
Writes OUTDIR/issue12_summary.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

CASE = ["--workload", "gpt", "--workload-opt", "size=tiny", "--micro-batch", "4", "--accum-steps", "1,2",
        "--warmup", "2", "--steps", "3"]

NAN_PLUGIN = '''
import torch, torch.nn.functional as F
from accumbench import Workload

def build():
    seen = []
    def batch(n, g):
        entry = next((e for e in seen if e[0] is g), None) or seen.append([g, 0]) or seen[-1]
        entry[1] += 1
        x = torch.randn(n, 16, generator=g)
        if entry[1] == 2:
            x[0, 0] = float("nan")
        return x, torch.randint(0, 4, (n,), generator=g)
    return Workload(name="nan-at-2", build_model=lambda: torch.nn.Linear(16, 4), make_batch=batch,
                    loss=lambda out, b: F.cross_entropy(out, b[1]))
'''


def accumbench(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accumbench", *args]
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, capture_output=True, text=True)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    args = sys.argv[1:]
    device = "cuda"
    if "--device" in args:
        device = args[args.index("--device") + 1]
        del args[args.index("--device"):args.index("--device") + 2]
    if len(args) != 1:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("issue12_*"):
        old.unlink()
    failures: list[str] = []
    summary: dict = {"device": device}

    def check(name: str, ok: bool, detail: str = "") -> None:
        summary[name] = ok
        print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
        if not ok:
            failures.append(name)

    run_file = out / "issue12_run.jsonl"
    done = accumbench("run", "--device", device, *CASE, "--out", str(run_file))
    found = records(run_file) if run_file.exists() else []
    check("run_writes_ok_records_with_seed", done.returncode == 0 and len(found) == 3
          and all(r["status"] == "ok" and r["seed"] == 0 and r["meter"] == device for r in found),
          done.stderr[-400:] if done.returncode else "")

    steps = [*CASE[:-1], "5"]
    refused = accumbench("run", "--device", device, *steps, "--out", str(run_file), "--resume")
    check("resume_with_other_steps_refused", refused.returncode == 2 and "steps_setting" in refused.stderr
          and len(records(run_file)) == 3, refused.stderr.strip()[-300:])

    plugin = out / "issue12_nan_plugin.py"
    plugin.write_text(NAN_PLUGIN)
    nan_file = out / "issue12_nan.jsonl"
    nan = accumbench("run", "--device", device, "--workload", f"{plugin}:build", "--scenario", "accumulated",
                     "--micro-batch", "2", "--accum-steps", "3", "--warmup", "1", "--steps", "2", "--out", str(nan_file))
    nan_records = records(nan_file) if nan_file.exists() else []
    check("nan_loss_is_an_error_naming_the_micro_step", nan.returncode == 1 and len(nan_records) == 1
          and "micro-step 2 of 3" in (nan_records[0].get("error") or "")
          and "NonFiniteLoss" in (nan_records[0].get("traceback") or ""),
          (nan_records[0].get("error") if nan_records else nan.stderr[-300:]) or "")

    ddp_file = out / "issue12_ddp.jsonl"
    first = subprocess.Popen([sys.executable, "-m", "accumbench", "run", "--device", device, "--nproc-per-node", "1",
                              *CASE, "--out", str(ddp_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    lock = ddp_file.with_name(ddp_file.name + ".lock")
    for _ in range(200):  # wait for the launcher to take the lock
        if lock.exists() and lock.read_text().strip():
            break
        time.sleep(0.05)
    second = accumbench("run", "--device", device, "--nproc-per-node", "1", *CASE, "--out", str(ddp_file), "--resume")
    _, first_err = first.communicate(timeout=600)
    check("second_ddp_writer_refused", second.returncode == 2 and "is being written by pid" in second.stderr,
          second.stderr.strip()[-300:])
    ddp_records = records(ddp_file) if ddp_file.exists() else []
    check("ddp_session_writes_records", first.returncode == 0 and len(ddp_records) >= 2
          and all(r["status"] == "ok" and r["seed"] == 0 for r in ddp_records), first_err[-400:])

    (out / "issue12_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("FAILED: " + ", ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
