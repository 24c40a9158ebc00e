"""Audit the estimate's fake kernels against the real CPU kernels on torch's own op catalogue.

For the first samples of every OpInfo in `torch.testing._internal.common_methods_invocations`
that supports autograd in the dtype, run the op forward and backward twice: on real CPU tensors,
and on fake tensors with the estimate's kernels (`accumbench.meters.fake_kernels.FAKE_KERNELS`)
in place of torch's. Each backward runs once with a contiguous incoming gradient and once with a
transposed one. Every aten op's outputs are compared in order: shape, strides, dtype and storage
bytes. A difference means the estimate and the cpu meter could count different bytes (a copy the
other does not make, a storage of another size).

    pip install expecttest hypothesis numpy      # what torch's test catalogue imports
    python benchmarks/fake_kernel_audit.py OUT.json [--dtype bfloat16] [--samples 6] [OP ...]

Writes OUT.json ({op: [difference, ...]}) and prints one line per aten op that differs, with
the OpInfos where it did. Ops whose fake run fails on a data-dependent size are listed apart:
the estimate resolves those from known values (`meters/known_values.py`), which this audit
does not set up.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from accumbench.meters.fake_kernels import FAKE_KERNELS, storage_layout  # noqa: E402


class OpLog(TorchDispatchMode):
    """Logs each aten op with its outputs' layouts; with `kernels`, runs the estimate's fake
    kernels where it has them."""

    def __init__(self, kernels: bool) -> None:
        super().__init__()
        self.kernels = kernels
        self.ops: list[tuple[str, list[tuple]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kernel = FAKE_KERNELS.get(func) if self.kernels else None
        out = kernel(*args, **kwargs) if kernel is not None else func(*args, **kwargs)
        if func.namespace != "prim":  # prim.device and kin: queries, no tensors made
            self.ops.append((str(func), [storage_layout(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]))
        return out


def incoming_gradients(outputs: list[torch.Tensor], transposed: bool) -> list[torch.Tensor]:
    """A gradient per output, seeded; `transposed`: laid out with the last two dimensions swapped."""
    generator = torch.Generator().manual_seed(0)
    grads = []
    for out in outputs:
        if transposed and out.dim() >= 2:
            shape = [*out.shape[:-2], out.shape[-1], out.shape[-2]]
            grads.append(torch.randn(shape, generator=generator, dtype=torch.float32).to(out.dtype).transpose(-1, -2))
        else:
            grads.append(torch.randn(out.shape, generator=generator, dtype=torch.float32).to(out.dtype))
    return grads


def differentiable_outputs(out) -> list[torch.Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.requires_grad]


def logged_step(op, sample, grads: list[torch.Tensor], fake: bool) -> list[tuple[str, list[tuple]]]:
    """The op's forward and backward on `sample` (real, or fake copies), logged."""
    mode = FakeTensorMode() if fake else None
    convert = (lambda x: mode.from_tensor(x) if isinstance(x, torch.Tensor) else x) if fake else (lambda x: x)
    inputs, args, kwargs = (tree_map(convert, part) for part in (sample.input, sample.args, sample.kwargs))
    grads = [convert(g) for g in grads]
    log = OpLog(kernels=fake)
    with mode if fake else torch.autograd.set_grad_enabled(True), log:
        outputs = differentiable_outputs(op(inputs, *args, **kwargs))
        if outputs:
            torch.autograd.backward(outputs, grads)
    return log.ops


def first_difference(real: list, fake: list) -> tuple | None:
    """The first op whose outputs differ, or the two op sequences when they part."""
    for (name, real_layouts), (fake_name, fake_layouts) in zip(real, fake):
        if name != fake_name:
            break
        if real_layouts != fake_layouts:
            return "layout", name, real_layouts, fake_layouts
    if [n for n, _ in real] != [n for n, _ in fake]:
        return "ops", [n for n, _ in real], [n for n, _ in fake]
    return None


def audit(dtype: torch.dtype, samples: int, only: set[str]) -> dict[str, list]:
    """{OpInfo name: [difference, ...]} over the catalogue (see the module docstring)."""
    from torch.testing._internal.common_methods_invocations import op_db

    found: dict[str, list] = defaultdict(list)
    for index, info in enumerate(op_db):
        if (only and info.name not in only) or not info.supports_autograd \
                or dtype not in info.supported_dtypes("cpu"):
            continue
        print(f"[{index + 1}/{len(op_db)}] {info.name}", file=sys.stderr, flush=True)
        try:
            cases = list(info.sample_inputs("cpu", dtype, requires_grad=True))[:samples]
        except Exception as exc:  # a catalogue entry that cannot make samples here
            found[info.name].append(("samples", f"{type(exc).__name__}: {exc}"[:160]))
            continue
        for number, sample in enumerate(cases):
            for transposed in (False, True):
                try:
                    grads = incoming_gradients(
                        differentiable_outputs(info.op(sample.input, *sample.args, **sample.kwargs)), transposed)
                    real = logged_step(info.op, sample, grads, fake=False)
                except Exception:
                    break  # the real op refuses this sample: nothing to compare
                for tensor in tree_flatten((sample.input, sample.args, sample.kwargs))[0]:
                    if isinstance(tensor, torch.Tensor):
                        tensor.grad = None  # the fake run starts from the same (no) gradients
                try:
                    fake = logged_step(info.op, sample, grads, fake=True)
                except Exception as exc:
                    found[info.name].append(("fake run failed", number, transposed, f"{type(exc).__name__}: {exc}"[:160]))
                    continue
                difference = first_difference(real, fake)
                if difference:
                    found[info.name].append((difference[0], number, transposed, *difference[1:]))
    return dict(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSON file for the differences")
    parser.add_argument("ops", nargs="*", help="OpInfo names to audit (default: all)")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
    parser.add_argument("--samples", type=int, default=6, help="samples per OpInfo (default 6)")
    options = parser.parse_args(argv)
    found = audit(getattr(torch, options.dtype), options.samples, set(options.ops))
    options.out.write_text(json.dumps(found, indent=1, default=str))
    by_op: dict[str, set[str]] = defaultdict(set)
    for name, differences in found.items():
        for difference in differences:
            by_op[difference[3] if difference[0] == "layout" else difference[0]].add(name)
    for what, names in sorted(by_op.items()):
        print(f"{what}: {', '.join(sorted(names))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
