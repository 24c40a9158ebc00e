"""CUDA's autocast policy, applied to CPU tensors: how the estimate meter casts like a GPU.

The estimate runs on fake CPU tensors, so torch's CPU autocast (AutocastCPU) decides which ops
run in bf16/fp16 and which in fp32. Its lists differ from CUDA's: CUDA runs layer and group norm,
softmax, log-softmax, sums, exp/log/pow and most losses in fp32, the CPU leaves them in the
input's dtype, and the CPU upcasts a few ops CUDA leaves alone (padding, pooling, fft, linalg).
Memory follows dtypes (a GroupNorm in fp32 keeps fp32 activations), so while
`cuda_autocast_policy()` is active the AutocastCPU kernels are replaced by Python kernels with
CUDA's policy (`CUDA_AUTOCAST_POLICY`, from aten/src/ATen/autocast_mode.cpp; a test checks it
covers every op the installed torch registers for AutocastCUDA). The kernels run above autograd,
as autocast does, so the casts are recorded and their results saved for backward as on CUDA.
It also tells the estimate's fake kernels to model CUDA's kernels
(`accumbench.meters.fake_kernels.imitating_cuda`: no oneDNN LSTM workspace).

Not reproduced: the autocast cache for the Python kernels' casts (ops CUDA casts to lower
precision but the CPU does not, e.g. einsum, addmv: a weight used twice is cast twice), and
CUDA-only composite paths (softmax of fp16 with an fp32 dtype skips a copy on CUDA).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

import torch

from accumbench.meters.fake_kernels import imitating_cuda

# Cast policy of every op with an AutocastCUDA kernel (aten/src/ATen/autocast_mode.cpp). A test
# checks this table covers what the installed torch registers.
LOWER, FP32, FP32_SET_DTYPE, FP32_APPEND_DTYPE, PROMOTE, BANNED = (
    "lower_precision_fp", "fp32", "fp32_set_opt_dtype", "fp32_append_dtype", "promote", "banned")
CUDA_AUTOCAST_POLICY: dict[str, str] = {
    **dict.fromkeys((
        "_convolution", "_convolution.deprecated", "conv1d", "conv2d", "conv3d", "conv_tbc",
        "conv_transpose1d", "conv_transpose2d.input", "conv_transpose3d.input", "convolution",
        "cudnn_convolution", "cudnn_convolution_transpose", "prelu", "addmm", "addmv", "addr",
        "matmul", "einsum", "mm", "mv", "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm",
        "chain_matmul", "linalg_multi_dot", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell",
        "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell", "_scaled_dot_product_flash_attention",
        "scaled_dot_product_attention"), LOWER),
    **dict.fromkeys((
        "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal",
        "rsqrt", "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus",
        "layer_norm", "native_layer_norm", "group_norm", "rms_norm", "frobenius_norm.dim", "nuclear_norm",
        "nuclear_norm.dim", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss",
        "nll_loss2d", "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss",
        "mse_loss", "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss",
        "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist",
        "cdist", "renorm", "logsumexp", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
        "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d",
        "upsample_linear1d", "upsample_bilinear2d", "_upsample_bilinear2d_aa", "upsample_trilinear3d",
        "upsample_bicubic2d", "_upsample_bicubic2d_aa"), FP32),
    **dict.fromkeys((
        "prod", "prod.dim_int", "prod.dim_Dimname", "softmax.int", "softmax.Dimname", "log_softmax.int",
        "log_softmax.Dimname", "cumprod", "cumprod.dimname", "cumsum", "cumsum.dimname",
        "linalg_vector_norm", "linalg_matrix_norm", "linalg_matrix_norm.str_ord", "sum",
        "sum.dim_IntList", "sum.dim_DimnameList"), FP32_SET_DTYPE),
    **dict.fromkeys(("norm.Scalar", "norm.ScalarOpt_dim", "norm.names_ScalarOpt_dim"), FP32_APPEND_DTYPE),
    **dict.fromkeys(("addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler",
                     "index_put", "tensordot", "scatter_add"), PROMOTE),
    "binary_cross_entropy": BANNED,
}
# Ops whose CPU kernel casts exactly as CUDA's would: keep the C++ kernel (it caches weight casts).
_SAME_ON_CPU = frozenset(name for name, policy in CUDA_AUTOCAST_POLICY.items() if policy in (LOWER, FP32))
_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _op(name: str) -> torch._ops.OpOverload:
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet), overload or "default")


def eligible(value: Any) -> bool:
    """A tensor autocast may cast: floating point, not fp64."""
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64


def _cast_all(value: Any, dtype: torch.dtype) -> Any:
    if eligible(value):
        return value if value.dtype == dtype else value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_all(v, dtype) for v in value)
    return value


def _tensors(values: Any) -> Iterator[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)


def _policy_kernel(name: str, policy: str) -> Callable[..., Any]:
    """A Python AutocastCPU kernel that casts as CUDA's autocast would, then runs the op below
    autocast (so autograd records the casts, as it does on CUDA)."""
    op = _op(name)

    def run(args: tuple, kwargs: dict) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            return op(*args, **kwargs)

    if policy == LOWER:
        def kernel(*args, **kwargs):
            dtype = torch.get_autocast_dtype("cpu")
            return run(_cast_all(args, dtype), {k: _cast_all(v, dtype) for k, v in kwargs.items()})
    elif policy == FP32:
        def kernel(*args, **kwargs):
            return run(_cast_all(args, torch.float32), {k: _cast_all(v, torch.float32) for k, v in kwargs.items()})
    elif policy == FP32_SET_DTYPE:
        arguments = op._schema.arguments
        position = next(i for i, a in enumerate(arguments) if a.name == "dtype")
        kwarg_only = arguments[position].kwarg_only

        def kernel(*args, **kwargs):
            given = kwargs.get("dtype") if kwarg_only or len(args) <= position else args[position]
            if given is None and args and eligible(args[0]):
                if kwarg_only or len(args) <= position:
                    kwargs = {**kwargs, "dtype": torch.float32}
                else:
                    args = (*args[:position], torch.float32, *args[position + 1:])
            return run(args, kwargs)
    elif policy == FP32_APPEND_DTYPE:
        with_dtype = _op("norm.ScalarOpt_dtype" if name == "norm.Scalar" else
                         "norm.names_ScalarOpt_dim_dtype" if "names" in name else "norm.ScalarOpt_dim_dtype")

        def kernel(*args, **kwargs):
            if args and eligible(args[0]):
                with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
                    return with_dtype(*args, **kwargs, dtype=torch.float32)
            return run(args, kwargs)
    elif policy == PROMOTE:
        def kernel(*args, **kwargs):
            dtype = torch.get_autocast_dtype("cpu")
            for tensor in _tensors(list(args) + list(kwargs.values())):
                if eligible(tensor):
                    dtype = torch.promote_types(dtype, tensor.dtype)
            return run(_cast_all(args, dtype), {k: _cast_all(v, dtype) for k, v in kwargs.items()})
    elif policy == BANNED:
        def kernel(*args, **kwargs):
            raise RuntimeError(f"torch.nn.functional.{name} is unsafe to autocast on CUDA; "
                               "use binary_cross_entropy_with_logits")
    else:  # passthrough: CUDA has no kernel for this op, the CPU has one
        def kernel(*args, **kwargs):
            return run(args, kwargs)
    return kernel


@contextlib.contextmanager
def cuda_autocast_policy() -> Iterator[None]:
    """While active, CPU autocast casts as CUDA autocast does: the AutocastCPU kernels of ops
    whose CUDA policy differs (layer/group norm, softmax and sums in fp32...) are replaced by
    Python kernels with CUDA's policy, and CPU-only autocast kernels by pass-throughs; the
    estimate's fake kernels model CUDA's kernels (`imitating_cuda`). The registrations are
    removed on exit, which restores the CPU's own kernels."""
    library = torch.library.Library("aten", "IMPL")
    # aten ops only: other namespaces (extensions) keep their own autocast kernels.
    registered = torch._C._dispatch_get_registrations_for_dispatch_key
    cuda_ops = {n for n in registered("AutocastCUDA") if n.startswith("aten::")}
    cpu_ops = {n for n in registered("AutocastCPU") if n.startswith("aten::")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel": on purpose
            for qualified in sorted(cuda_ops | cpu_ops):
                name = qualified.split("::", 1)[1]
                if name in _SAME_ON_CPU and qualified in cpu_ops:
                    continue
                policy = CUDA_AUTOCAST_POLICY.get(name, "passthrough") if qualified in cuda_ops else "passthrough"
                library.impl(name, _policy_kernel(name, policy), "AutocastCPU")
        with imitating_cuda():
            yield
    finally:
        library._destroy()


__all__ = ["BANNED", "CUDA_AUTOCAST_POLICY", "FP32", "FP32_APPEND_DTYPE", "FP32_SET_DTYPE", "LOWER", "PROMOTE",
           "cuda_autocast_policy", "eligible"]
