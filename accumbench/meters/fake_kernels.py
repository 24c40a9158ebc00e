"""Fake kernels for ops whose own fake (meta) kernel is stricter than the real op, and the
one-line refusal for an op the estimate cannot model.

A fake kernel here returns what the real CPU kernel returns: the same sizes, strides, dtype and
storage bytes (checked against the real op on small real tensors in tests/test_fake_kernels.py),
so the tracker counts the same bytes as on the cpu meter. Each runs while the fake-tensor mode
is current, so the tensors it makes are fake.

- `aten._grouped_mm` (mixture-of-experts layers: transformers' `grouped_mm` experts): torch's
  meta kernel accepts bf16 only ("Expected inputs of BF16 type but got mat_a.dtype=torch.float32"),
  while the CPU (and CUDA) kernel takes fp32 and fp16 as well. Its output is made the way the real
  kernel makes it (aten/src/ATen/native/GroupedMMUtils.h, `create_grouped_gemm_output_tensor`):
  the last dimension's stride padded to 16 bytes, which the meta kernel of a CPU-only torch
  build leaves out.
"""

from __future__ import annotations

from typing import Callable

import torch

aten = torch.ops.aten


class UnmodelledOp(RuntimeError):
    """An op the estimate cannot model; the message is one line and names the op."""

    def __init__(self, op: str, why: str) -> None:
        super().__init__(f"the estimate cannot model {op}: {why}")
        self.op = op


def op_name(func) -> str:
    """`aten.nonzero` style name of an OpOverload (overload kept when not `default`)."""
    packet = getattr(func, "overloadpacket", func)
    name = f"{getattr(packet, '_qualified_op_name', str(packet)).replace('::', '.')}"
    overload = getattr(func, "_overloadname", "default")
    return name if overload == "default" else f"{name}.{overload}"


def _check_strides(name: str, mat: torch.Tensor) -> None:
    """The real kernel's rule: the leading stride of a row- or column-major matrix is a
    multiple of 16 bytes."""
    end = mat.dim() - 1
    alignment = 16 // mat.element_size()
    stride = mat.stride()
    if stride[end - 1] == 1 and stride[end] >= max(1, mat.shape[end - 1]):
        lead = stride[end]
    elif stride[end] == 1 and stride[end - 1] >= max(1, mat.shape[end]):
        lead = stride[end - 1]
    else:
        return
    if lead % alignment:
        raise RuntimeError(f"strides should be multiple of 16 bytes ({name})")


def grouped_mm(mat_a: torch.Tensor, mat_b: torch.Tensor, offs: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`aten._grouped_mm` as the real kernel allocates it, for any floating dtype."""
    torch._check(mat_a.dtype == mat_b.dtype and mat_a.dtype.is_floating_point,
                 lambda: f"grouped_mm needs two inputs of one floating dtype, got {mat_a.dtype} and {mat_b.dtype}")
    torch._check(mat_a.dim() in (2, 3) and mat_b.dim() in (2, 3), lambda: "Multiplicands must be 2D or 3D")
    a_2d, b_2d = mat_a.dim() == 2, mat_b.dim() == 2
    if not a_2d or not b_2d:
        torch._check(mat_a.size(-1) == mat_b.size(-2), lambda: "contraction dimension of mat_a and mat_b must match")
    torch._check((offs is not None) == (a_2d or b_2d), lambda: "offsets are needed exactly when one input is 2D")
    torch._check(bias is None, lambda: "Bias tensor provided, but it is not supported yet.")
    _check_strides("mat_a", mat_a)
    _check_strides("mat_b", mat_b)
    if a_2d:
        size = [offs.size(0), mat_a.size(0), mat_b.size(1)] if b_2d else [mat_a.size(0), mat_b.size(-1)]
    else:
        size = [mat_a.size(1), mat_b.size(1)] if b_2d else [mat_a.size(0), mat_a.size(1), mat_b.size(-1)]
    dtype = out_dtype or mat_a.dtype
    alignment = 16 // dtype.itemsize
    padded = -(-size[-1] // alignment) * alignment
    stride = [padded, 1] if a_2d != b_2d else [size[1] * padded, padded, 1]
    return torch.empty_strided(size, stride, dtype=dtype, device=mat_a.device)


# A literal registry: op -> fake kernel taking the op's own arguments.
FAKE_KERNELS: dict[object, Callable[..., object]] = {
    aten._grouped_mm.default: grouped_mm,
}

__all__ = ["FAKE_KERNELS", "UnmodelledOp", "grouped_mm", "op_name"]
