"""Measure the step-time model's constants directly, with microbenchmarks, instead of fitting them.

Issue 15's held-out validation fits constants to whole training steps of six workloads, and
some are barely pinned down by them: without GPT-2 no training case is GEMM-bound, and the host
costs per op and per launch trade against each other. So the GEMM and convolution efficiencies
are taken from here, and the validation also predicts every case with all of these constants and
no fitting (they owe nothing to the workloads, so every measured case becomes a held-out one):
`python benchmarks/steptime_validation.py ... --constants OUTDIR/speed_constants.json`.

    python benchmarks/gpu/speed_constants.py OUTDIR [--device-kind h100]   # CUDA, ~30 s
    python benchmarks/gpu/speed_constants.py OUTDIR --device cpu            # dry run (meaningless numbers)

Each constant, as `accumbench.steptime` uses it:
- `host_op_seconds`: host time of one dispatched op that launches nothing (a view), from Python;
- `launch_seconds`: host time one tiny in-place kernel takes on top of that;
- `kernel_floor_seconds`: device time of a tiny kernel, back to back behind a queued sleep;
- `bandwidth_efficiency`: a large bf16 copy's bytes read and written per second over the data
  sheet's bandwidth;
- `flop_efficiency`: a bf16 GEMM of GPT-2's MLP shape over the data sheet's peak;
- `conv_flop_efficiency`: a bf16 3x3 convolution of the large ConvNet's first stage, forward
  and backward, over the peak.

Also recorded, not used as a constant: GPT-2's causal attention forward and backward
(`attention_efficiency` in the raw timings), which the model prices at `flop_efficiency`.
Writes OUTDIR/speed_constants.json (the constants and the raw timings) and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from accumbench.estimate_assumptions import assumptions_for, kind_for_device_name
from accumbench.meters.base import WallClockTimer
from accumbench.meters.cuda import CudaEventTimer
from accumbench.stats import StepTimes


def median_seconds(work, repeats: int, cuda: bool, warmup: int = 1) -> float:
    """Median device seconds of `work()` over `repeats` calls after `warmup` calls: CUDA events
    around each call on CUDA (`CudaEventTimer`), the host clock on the CPU (`WallClockTimer`)."""
    timer = CudaEventTimer() if cuda else WallClockTimer()
    for _ in range(warmup):
        work()
    return StepTimes(timer.time_steps(work, repeats)).median


def host_seconds(work, repeats: int, cuda: bool) -> float:
    """Median host seconds of issuing `work()` (the device may still be running it)."""
    if cuda:
        torch.cuda.synchronize()
    return StepTimes(WallClockTimer().time_steps(work, repeats)).median


def parse_check_arguments(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """The arguments these microbenchmark checks share: OUTDIR, `--device` (cuda, or cpu for the
    dry run) and `--device-kind`, resolved from the GPU's name when not given (else h100)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--device-kind", default=None, help="h100, h200 or a100 (default: from the GPU's name)")
    args = parser.parse_args(argv)
    args.cuda = args.device == "cuda"
    if args.device_kind is None:
        named = kind_for_device_name(torch.cuda.get_device_name()) if args.cuda and torch.cuda.is_available() else None
        args.device_kind = named or "h100"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_check_arguments(__doc__, argv)
    device, cuda, kind = args.device, args.cuda, args.device_kind
    speed = assumptions_for(kind).speed()
    small = not cuda  # the CPU dry run uses small shapes
    n_ops = 2000 if cuda else 200
    raw: dict[str, float] = {}

    # Host: a view launches nothing; a tiny in-place add launches one kernel.
    x = torch.zeros(16, device=device)
    raw["view_host_s"] = host_seconds(lambda: [x.view(4, 4) for _ in range(n_ops)], 5, cuda) / n_ops
    raw["add_host_s"] = host_seconds(lambda: [x.add_(1.0) for _ in range(n_ops)], 5, cuda) / n_ops
    # Device: the same tiny kernels back to back. On CUDA a sleep kernel queued first (~25 ms of
    # GPU cycles) lets the host run ahead, so the kernels do not wait for their launches.
    if cuda:
        torch.cuda._sleep(50_000_000)
    raw["add_device_s"] = median_seconds(lambda: [x.add_(1.0) for _ in range(200)], 5, cuda) / 200

    # Bandwidth: a large bf16 copy reads and writes every byte once.
    elements = (1 << 20) if small else (1 << 29)  # 1 GiB of bf16 on CUDA
    src = torch.randn(elements, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    copy_s = median_seconds(lambda: dst.copy_(src), 10, cuda)
    raw["copy_bytes"] = 2 * src.numel() * src.element_size()
    raw["copy_s"] = copy_s

    # GEMM: GPT-2's MLP up-projection at 16 x 512 tokens, bf16.
    tokens, d_model = (256, 64) if small else (8192, 768)
    a = torch.randn(tokens, d_model, device=device, dtype=torch.bfloat16)
    b = torch.randn(d_model, 4 * d_model, device=device, dtype=torch.bfloat16)
    gemm_s = median_seconds(lambda: torch.mm(a, b), 20, cuda)
    raw["gemm_flops"] = 2 * tokens * d_model * 4 * d_model
    raw["gemm_s"] = gemm_s

    # Convolution: the large ConvNet's first stage (64 channels, 64 x 64), forward and backward.
    batch, side = (2, 16) if small else (256, 64)
    image = torch.randn(batch, 64, side, side, device=device, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(64, 64, 3, 3, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(batch, 64, side, side, device=device, dtype=torch.bfloat16)
    conv_s = median_seconds(lambda: F.conv2d(image, weight, padding=1).backward(grad), 10, cuda)
    raw["conv_flops"] = 3 * 2 * batch * 64 * 64 * 9 * side * side  # forward, grad input, grad weight
    raw["conv_s"] = conv_s

    # Attention: GPT-2's causal SDPA at 16 x 512 tokens (12 heads of 64), forward and backward,
    # FLOPs as the flop counter counts them (in full, masked blocks too). Not a model constant
    # (attention runs at flop_efficiency): recorded to see how far below the MLP GEMM it runs.
    heads, seq, head_dim, rows = (2, 64, 32, 2) if small else (12, 512, 64, 16)
    q, k, v = (torch.randn(rows, heads, seq, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    out_grad = torch.randn(rows, heads, seq, head_dim, device=device, dtype=torch.bfloat16)
    attention_s = median_seconds(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(out_grad), 10, cuda)
    shape = (rows, heads, seq, head_dim)
    raw["attention_flops"] = sdpa_flop_count(shape, shape, shape) + sdpa_backward_flop_count(shape, shape, shape, shape)
    raw["attention_s"] = attention_s

    peak = speed.peak_flops["bf16"]
    raw["attention_efficiency"] = raw["attention_flops"] / attention_s / peak
    constants = {
        "host_op_seconds": raw["view_host_s"],
        "launch_seconds": max(raw["add_host_s"] - raw["view_host_s"], 0.0),
        "kernel_floor_seconds": raw["add_device_s"],
        "bandwidth_efficiency": min(raw["copy_bytes"] / copy_s / speed.memory_bandwidth, 1.0),
        "flop_efficiency": min(raw["gemm_flops"] / gemm_s / peak, 1.0),
        "conv_flop_efficiency": min(raw["conv_flops"] / conv_s / peak, 1.0),
    }
    result = {"device_kind": kind, "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
              "torch": torch.__version__, "constants": constants, "raw": raw}
    args.outdir.mkdir(parents=True, exist_ok=True)
    (args.outdir / "speed_constants.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
