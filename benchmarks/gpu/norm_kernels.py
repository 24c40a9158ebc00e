"""Time BatchNorm and GroupNorm (+ReLU) forward and backward at the large ConvNet's shapes.

Issue 15's largest miss: on the H100 the BatchNorm ConvNet runs slower than the GroupNorm one
(58.1 vs 54.3 ms at micro-batch 1024) although GroupNorm moves more bytes under autocast (it
runs in fp32, so its input is cast up and its output back down). The step-time model gives every
memory-bound kernel one bandwidth efficiency and so predicts BatchNorm faster. This measures what
each norm layer's forward and backward really take, with the input's bytes and the output's
dtype, so each kind's effective bandwidth can be set against the one efficiency the model fitted
(`accumbench.steptime` charges an op one read of its inputs and one write of its outputs) and,
if they differ, given its own constant.

    python benchmarks/gpu/norm_kernels.py OUTDIR                 # CUDA, ~20 s
    python benchmarks/gpu/norm_kernels.py OUTDIR --device cpu    # dry run, tiny shapes

Writes OUTDIR/norm_kernels.csv and prints it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
from torch import nn

# The timing of speed_constants.py, its neighbour here (run as a script, this folder is on sys.path).
from speed_constants import median_seconds

# (channels, image side) of the large ConvNet's four stages (accumbench/workloads/vision.py).
STAGES = ((64, 64), (128, 32), (256, 16), (512, 8))


def layer(kind: str, channels: int) -> nn.Module:
    """The norm layer the ConvNet uses, followed by its ReLU."""
    norm = nn.BatchNorm2d(channels) if kind == "bn" else nn.GroupNorm(max(1, channels // 8), channels)
    return nn.Sequential(norm, nn.ReLU())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=None, help="micro-batch (default 256 on CUDA, 2 on CPU)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    batch = args.batch or (256 if args.device == "cuda" else 2)
    repeats = args.repeats or (30 if args.device == "cuda" else 3)
    args.outdir.mkdir(parents=True, exist_ok=True)
    autocast_dtype = torch.bfloat16
    rows = []
    for kind in ("bn", "gn"):
        for channels, side in STAGES:
            module = layer(kind, channels).to(args.device)
            # The layer's input is a bf16 convolution output, as in the ConvNet under autocast.
            x = torch.randn(batch, channels, side, side, device=args.device, dtype=autocast_dtype, requires_grad=True)
            with torch.autocast(args.device, dtype=autocast_dtype):
                probe = module(x)
            grad = torch.ones_like(probe)

            def forward():
                with torch.autocast(args.device, dtype=autocast_dtype):
                    return module(x)

            def forward_backward():
                forward().backward(grad)

            fwd = median_seconds(forward, repeats, args.device == "cuda", warmup=3)
            both = median_seconds(forward_backward, repeats, args.device == "cuda", warmup=3)
            elements = x.numel()
            rows.append({"norm": kind, "channels": channels, "side": side, "batch": batch,
                         "input_bytes": elements * x.element_size(), "output_dtype": str(probe.dtype),
                         "forward_ms": round(fwd * 1e3, 4), "forward_backward_ms": round(both * 1e3, 4),
                         "backward_ms": round((both - fwd) * 1e3, 4)})
            print(rows[-1], flush=True)
    with open(args.outdir / "norm_kernels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
