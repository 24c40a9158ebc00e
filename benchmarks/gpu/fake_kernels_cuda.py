"""Do the estimate's fake kernels allocate what CUDA's real kernels allocate?

`accumbench/meters/fake_kernels.py` corrects torch's fake (meta) kernels where they disagree
with the real ones: the layouts of norm, log-softmax and activation gradients, the storage a
reduced loss keeps, the dtypes of norm statistics under autocast. The unit tests check them
against the CPU kernels; for CUDA the module cites CUDA's source. This runs each op for real on
CUDA and through its fake kernel as the estimate's CUDA kinds run it (`imitating_cuda()`), and
compares every output's shape, strides, dtype and storage bytes. It also records the scratch
each real call allocates and frees inside itself (the allocator's peak during the call above
what it returns), which no fake kernel sees: mse_loss's elementwise temporary, for one.

    python benchmarks/gpu/fake_kernels_cuda.py OUTDIR                 # CUDA, ~10 s
    python benchmarks/gpu/fake_kernels_cuda.py OUTDIR --device cpu    # dry run: the CPU kernels

Writes OUTDIR/fake_kernels_cuda.json and .md; exits 1 when an op's outputs differ.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from accumbench.meters.fake_kernels import FAKE_KERNELS, imitating_cuda, storage_layout  # noqa: E402

aten = torch.ops.aten


def calls(device: torch.device) -> list[tuple[str, object, tuple]]:
    """(label, op, arguments) for each fake kernel that models a device-generic kernel, at
    shapes where the correction matters (transposed gradients, a reduced loss, bf16 inputs)."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    def transposed(*shape, dtype=torch.float32):
        return randn(*shape, dtype=dtype).transpose(-1, -2)

    out = []
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        x, w, b = randn(8, 64, 96, dtype=dtype), randn(96, dtype=dtype), randn(96, dtype=dtype)
        _, mean, rstd = aten.native_layer_norm.default(x, [96], w, b, 1e-5)
        out.append((f"layer norm backward, transposed gradient, {name}", aten.native_layer_norm_backward.default,
                    (transposed(8, 96, 64, dtype=dtype), x, [96], mean, rstd, w, b, [True] * 3)))
        logits = randn(64, 1000, dtype=dtype).log_softmax(1)
        out.append((f"log-softmax backward, transposed gradient, {name}", aten._log_softmax_backward_data.default,
                    (transposed(1000, 64, dtype=dtype), logits, 1, dtype)))
        for label, op, extra in (("hardtanh", aten.hardtanh_backward.default, (0.0, 6.0)),
                                 ("hardswish", aten.hardswish_backward.default, ()),
                                 ("logit", aten.logit_backward.default, (None,))):
            value = randn(256, 128, dtype=dtype).sigmoid()
            out.append((f"{label} backward, transposed gradient, {name}", op,
                        (transposed(128, 256, dtype=dtype), value, *extra)))
        for memory_format in (torch.contiguous_format, torch.channels_last):
            xb = randn(8, 32, 16, 16, dtype=dtype).contiguous(memory_format=memory_format)
            wb = randn(32).abs() + 0.5
            running_mean, running_var = torch.zeros(32, device=device), torch.ones(32, device=device)
            _, save_mean, save_invstd = aten.native_batch_norm.default(xb, wb, None, running_mean, running_var,
                                                                       True, 0.1, 1e-5)
            grad = randn(8, 32, 16, 16, dtype=dtype).transpose(2, 3)
            layout = "channels-last" if memory_format is torch.channels_last else "contiguous"
            out.append((f"batch norm backward, {layout} input, transposed gradient, {name}",
                        aten.native_batch_norm_backward.default,
                        (grad, xb, wb, running_mean, running_var, save_mean, save_invstd, True, 1e-5, [True] * 3)))
    prediction, target = randn(64, 512).sigmoid(), randn(64, 512).sigmoid()
    for label, op, args in (("mse", aten.mse_loss.default, (prediction, target, 1)),
                            ("smooth L1", aten.smooth_l1_loss.default, (prediction, target, 1, 1.0)),
                            ("binary cross-entropy", aten.binary_cross_entropy.default, (prediction, target, None, 1)),
                            ("soft margin", aten.soft_margin_loss.default, (prediction, target.sign(), 1))):
        out.append((f"{label} loss, mean over 64 x 512", op, args))
    return out


def layouts(result) -> list:
    """Shape, strides, dtype and storage bytes of every tensor the op returned."""
    tensors = list(result) if isinstance(result, (tuple, list)) else [result]
    return [storage_layout(t) for t in tensors]


def real_call(op, args: tuple, device: torch.device) -> tuple[list, int | None]:
    """The real kernel's outputs and (on CUDA) its scratch: the allocator's peak during the
    call above what was allocated before it plus what it returned."""
    if device.type != "cuda":
        return layouts(op(*args)), None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = op(*args)
    torch.cuda.synchronize()
    returned = torch.cuda.memory_allocated() - before
    return layouts(result), torch.cuda.max_memory_allocated() - before - returned


def fake_call(op, args: tuple, cuda: bool) -> list:
    """The fake kernel's outputs on fake CPU copies, as the estimate runs it for a CUDA kind."""
    cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, (imitating_cuda() if cuda else contextlib.nullcontext()):
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in cpu_args]
        return layouts(FAKE_KERNELS[op](*fake))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a dry run")
    options = parser.parse_args(argv)
    device = torch.device(options.device)
    options.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, op, args in calls(device):
        real, scratch = real_call(op, args, device)
        fake = fake_call(op, args, device.type == "cuda")
        rows.append({"call": label, "op": str(op), "same": real == fake, "real": real, "fake": fake,
                     "scratch_bytes": scratch})
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    (options.out / "fake_kernels_cuda.json").write_text(json.dumps({"device": name, "torch": torch.__version__,
                                                                   "calls": rows}, indent=1))
    lines = [f"# Fake kernels vs the real kernels on {name} (torch {torch.__version__})", "",
             "| call | outputs equal | scratch inside the call |", "| --- | --- | ---: |"]
    lines += [f"| {r['call']} | {'yes' if r['same'] else 'NO'} | "
              f"{'-' if r['scratch_bytes'] is None else format(r['scratch_bytes'], ',') + ' B'} |" for r in rows]
    (options.out / "fake_kernels_cuda.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    differing = [r for r in rows if not r["same"]]
    for row in differing:
        print(f"DIFFERS: {row['call']}: real {row['real']} fake {row['fake']}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
