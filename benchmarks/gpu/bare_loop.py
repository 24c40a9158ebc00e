"""A bare, hand-written accumulation loop (nanoGPT style) to check the harness adds nothing.

Usage: python benchmarks/gpu/bare_loop.py --micro-batch 8 --accum-steps 4 --out bare.json

It uses the same model class and the same seeds as `accumbench run --workload gpt
--workload-opt size=gpt2 --amp bf16`, but none of accumbench's runner, scenarios or meters: the
loop, the memory reading and the timing are written out here. Compare its peak and median step
time with the harness record of the same case.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from accumbench.workloads.gpt import GPT, GPT_SIZES, IGNORE_INDEX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accum-steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.backends.cudnn.benchmark = False
    cfg = GPT_SIZES["gpt2"]
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    generator = torch.Generator().manual_seed(0)
    host = []
    for _ in range(args.accum_steps):
        tokens = torch.randint(0, cfg.vocab_size, (args.micro_batch, cfg.seq_len + 1), generator=generator)
        host.append((tokens[:, :-1].clone().pin_memory(), tokens[:, 1:].clone().pin_memory()))

    def train_step() -> None:
        for x, y in host:
            x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                # Not bound to a name: a `logits` variable would keep the bf16 logits (51 MB a
                # sample at vocab 50k) alive through backward, which the workload's loss does not.
                loss = F.cross_entropy(model(x).float().flatten(0, 1), y.view(-1), ignore_index=IGNORE_INDEX)
            if args.accum_steps > 1:
                loss = loss / args.accum_steps
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        train_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(args.steps)]
    for start, end in events:
        start.record()
        train_step()
        end.record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) / 1000 for s, e in events]
    result = {
        "micro_batch": args.micro_batch,
        "accum_steps": args.accum_steps,
        "peak_allocated": torch.cuda.max_memory_allocated(),
        "step_times_s": times,
        "median_step_time_s": statistics.median(times),
        "samples_per_s": args.micro_batch * args.accum_steps / statistics.median(times),
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "step_times_s"}))


if __name__ == "__main__":
    main()
