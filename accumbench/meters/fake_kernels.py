"""Fake kernels for ops whose own fake (meta) kernel disagrees with the real op, and the one-line
refusal for an op the estimate cannot model.

A fake kernel here returns what the real CPU kernel returns: the same sizes, strides, dtype and
storage bytes (checked against the real op on small real tensors in tests/test_fake_kernels.py),
so the tracker counts the same bytes as on the cpu meter. Each runs while the fake-tensor mode
is current, so the tensors it makes are fake; most call the op's own fake kernel and correct
what it gets wrong.

The same kernels run when the estimate predicts a CUDA device (its fake tensors are CPU tensors).
Each one below says what CUDA's kernel does; the one allocation only the CPU kernel makes
(oneDNN's LSTM workspace) is left out while `imitating_cuda()` is active, which
`accumbench.meters.cuda_autocast.cuda_autocast_policy` enters for the CUDA kinds.

- `aten._grouped_mm` (mixture-of-experts layers: transformers' `grouped_mm` experts): torch's
  meta kernel accepts bf16 only ("Expected inputs of BF16 type but got mat_a.dtype=torch.float32"),
  while the CPU (and CUDA) kernel takes fp32 and fp16 as well. Its output is made the way the real
  kernel makes it (aten/src/ATen/native/GroupedMMUtils.h, `create_grouped_gemm_output_tensor`):
  the last dimension's stride padded to 16 bytes, which the meta kernel of a CPU-only torch
  build leaves out.
- `aten.mkldnn_rnn_layer` (`nn.LSTM` on the CPU: one call per layer and direction): the real
  kernel (aten/src/ATen/native/mkldnn/RNN.cpp) returns, when grad mode is on, the oneDNN
  training workspace that the backward reads, and autograd keeps it until then; the meta kernel
  returns an empty one. Its size is oneDNN's (`lstm_workspace_bytes`). Only the CPU has it: on
  CUDA an LSTM runs on cuDNN with its own reserve space, which this does not model, so the
  CUDA kinds keep torch's empty workspace. (GRU and vanilla RNN do not go through oneDNN.)
- `aten.mkldnn_rnn_layer_backward`: the real kernel returns the gradients of the two LSTM biases
  on two storages (the second a clone of the first); the meta kernel returns one tensor twice,
  so autograd copies it when it accumulates the second (the copy comes later than the real
  kernel's clone: the peak can differ). CPU-only as well, left to torch for the CUDA kinds.
- `aten.im2col` / `aten.col2im` (`F.unfold` / `F.fold`, each the other's backward): the real
  kernel, on the CPU and on CUDA alike (Im2Col.cpp, Col2Im.cpp and their .cu twins), allocates
  its output like its input (`empty_like`) and then `resize_`s it to the output's size, which
  keeps the larger storage: max(input, output) bytes where the meta kernel has the output's.
- `aten.native_batch_norm` and its variants (`_native_batch_norm_legit*`,
  `_batch_norm_with_update*`, `_batch_norm_no_update`), `aten.native_layer_norm`,
  `aten.native_group_norm`: given a bf16/fp16 input and fp32 weights or running statistics
  (BatchNorm, LayerNorm, GroupNorm under CPU autocast), the real kernel keeps the saved mean and
  inverse std in fp32 ("mixed type", aten/src/ATen/native/mixed_data_type.h:
  `param_scalar_type`), where the meta kernel gives them the input's dtype. CUDA's kernels keep
  them in fp32 as well (accumulate type; cuDNN's batch norm in the weights' fp32). The
  functional variants' updated running statistics keep the running statistics' dtype.
- `aten._embedding_bag` and `_embedding_bag_forward_only` (`nn.EmbeddingBag` on the CPU): the
  real kernel allocates `offset2bag` on one element more than the indices and `bag_size`, with
  `include_last_offset`, on one per offset, and shrinks both with `resize_`, keeping the larger
  storage; the meta kernel has the final sizes (and the forward-only one other sizes with
  `include_last_offset`). CUDA's kernel is not modelled here: the CUDA
  kinds keep torch's result.
- `aten.native_group_norm_backward`: the real kernel (group_norm.cpp, for every device) makes
  grad_input like the input (bf16 under CPU autocast); the meta kernel makes it fp32, and
  autograd then adds a copy back to bf16.
- `aten.native_layer_norm_backward`, `aten._log_softmax_backward_data`: the real kernels
  (layer_norm.cpp and its CUDA twin: `empty_like` of the contiguous input and parameters;
  SoftMax.cpp's structured meta, shared by CUDA) make their gradients contiguous, where the
  meta kernels follow the incoming gradient's strides. A transposed gradient (Swin's pooler,
  a `transpose` after the norm) then made the estimate copy it once more at the next `reshape`.
- `aten.hardtanh_backward` (ReLU6), `aten.hardswish_backward`, `aten.logit_backward`: the real
  kernels are elementwise (TensorIterator), whose output takes the layout of its first input,
  the incoming gradient, where the meta kernels (decompositions into `where`) take the input's.
- `aten.native_batch_norm_backward`, `aten.batch_norm_backward`: grad_input like the input in
  the input's suggested memory format (Normalization.cpp and its CUDA twin), where the meta
  kernel follows the gradient's strides.
- `aten.mse_loss`, `aten.smooth_l1_loss`, `aten.binary_cross_entropy`, `aten.soft_margin_loss`
  with a mean or sum reduction: the real kernel computes the elementwise loss into its output
  and then reduces it in place (`mean_out`, `resize_as_`), so the scalar loss keeps a storage
  of the elementwise loss's size, and holds it while the loss lives (through the backward).
  CUDA runs the same code (the structured mse and smooth-L1 kernels and soft margin's are
  device-generic in Loss.cpp; binary cross-entropy's Loss.cu does as the CPU's); the meta
  kernels give the scalar a storage of one element.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterator

import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false, suggest_memory_format

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


# --- which device's kernels the fakes imitate ----------------------------------------------------

_imitating_cuda = 0  # depth of imitating_cuda(); module-wide, as autograd may run on another thread


@contextlib.contextmanager
def imitating_cuda() -> Iterator[None]:
    """While active, the fake kernels model CUDA's kernels rather than the CPU's: those of an
    allocation only the CPU kernel makes (oneDNN's LSTM workspace) return torch's own fake
    result. Entered by `cuda_autocast_policy()`, that is for the estimate's CUDA kinds."""
    global _imitating_cuda
    _imitating_cuda += 1
    try:
        yield
    finally:
        _imitating_cuda -= 1


def cuda_imitated() -> bool:
    """True while `imitating_cuda()` is active."""
    return _imitating_cuda > 0


# --- LSTM on the CPU: oneDNN's training workspace -------------------------------------------------

MKLDNN_LSTM_MODE = 2  # `mode` of an LSTM in mkldnn_rnn_layer (ideep::rnn_kind::LSTM)
_PAGE = 4096  # oneDNN page-aligns each part of the workspace (rnn_utils.cpp, set_offsets)


def _good_ld(dim: int, itemsize: int) -> int:
    """oneDNN's leading dimension for a GEMM operand (rnn_utils.cpp, `get_good_ld`): rounded up
    to 64 bytes, plus 64 bytes more when a multiple of 256 elements (4K aliasing)."""
    per_line = 64 // itemsize
    ld = -(-dim // per_line) * per_line
    return ld + per_line if ld % 256 == 0 else ld


def lstm_workspace_bytes(seq_len: int, batch: int, input_size: int, hidden_size: int,
                         dtype: torch.dtype, cell_dtype: torch.dtype | None = None) -> int:
    """Bytes of the workspace oneDNN's LSTM forward-training primitive asks for, for one layer
    and one direction (what one `mkldnn_rnn_layer` call allocates).

    oneDNN 3.x (rnn_utils.hpp `init_conf`/`set_workspace_sizes`, rnn_utils.cpp `set_offsets`),
    with n_layer = n_dir = 1, 4 gates, T = seq_len, B = batch, "data" the input's dtype, the
    gradient parts in fp32; each part starts on a 4096-byte page and the total is page-rounded:
    gates T*B*ld(4H), hidden states T*B*ld(H), layer states 2*(T+1)*B*ld(max(I, H)), cell states
    2*(T+1)*B*H (in the cell state's dtype), diff layer and diff iter states
    2*(T+1)*B*ld(max(I, H)) fp32 each, diff cell states 2*(T+1)*B*H fp32. Checked to the byte
    against the real kernel in tests/test_fake_kernels.py (fp32 and bf16, several shapes).
    """
    data = dtype.itemsize
    cell = (cell_dtype or dtype).itemsize
    acc = 4  # gemm_acc_t: fp32 for fp32, bf16 and fp16 cells
    widest = max(input_size, hidden_size)
    states = 2 * (seq_len + 1) * batch  # (n_layer + 1) * n_dir * (n_iter + 1) * mb
    parts = [
        seq_len * batch * _good_ld(4 * hidden_size, data) * data,  # ws_gates
        seq_len * batch * _good_ld(hidden_size, data) * data,      # ws_ht
        states * _good_ld(widest, data) * data,                    # ws_states_layer (= iter)
        states * hidden_size * cell,                               # ws_states_iter_c
        states * _good_ld(widest, acc) * acc,                      # ws_diff_states_layer
        states * _good_ld(widest, acc) * acc,                      # ws_diff_states_iter
        states * hidden_size * acc,                                # ws_diff_states_iter_c
    ]
    offset = 0
    for size in parts:
        offset = -(-offset // _PAGE) * _PAGE + size
    return -(-offset // _PAGE) * _PAGE  # ws_grid_comp (GRU only) starts on the next page


def mkldnn_rnn_layer(input, w0, w1, w2, w3, hx, cx, reverse, batch_sizes, mode, hidden_size, num_layers,
                     has_biases, bidirectional, batch_first, train):
    """`aten.mkldnn_rnn_layer` with the real kernel's training workspace (see
    `lstm_workspace_bytes`); torch's own fake result otherwise."""
    output, hy, cy, workspace = aten.mkldnn_rnn_layer.default(
        input, w0, w1, w2, w3, hx, cx, reverse, batch_sizes, mode, hidden_size, num_layers,
        has_biases, bidirectional, batch_first, train)
    # The real kernel allocates the workspace when grad mode is on (not when `train` is), and
    # only for an LSTM; it reads its input as (seq, batch, features) whatever batch_first says.
    if cuda_imitated() or not torch.is_grad_enabled() or mode != MKLDNN_LSTM_MODE:
        return output, hy, cy, workspace
    nbytes = lstm_workspace_bytes(input.size(0), input.size(1), input.size(2), hidden_size,
                                  input.dtype, cx.dtype if cx is not None else None)
    return output, hy, cy, torch.empty(nbytes, dtype=torch.uint8, device=input.device)


def mkldnn_rnn_layer_backward(input, weight0, weight1, weight2, weight3, hx, cx, output, hy, cy, grad_output,
                              grad_hy, grad_cy, reverse, mode, hidden_size, num_layers, has_biases, train,
                              bidirectional, batch_sizes, batch_first, workspace):
    """`aten.mkldnn_rnn_layer_backward` with the two bias gradients on two storages, as the real
    kernel returns them (`diff_b2_ = at::clone(diff_b_)`); torch's meta kernel returns one tensor
    twice, and autograd's AccumulateGrad then copies the shared one instead of taking it."""
    grads = aten.mkldnn_rnn_layer_backward.default(
        input, weight0, weight1, weight2, weight3, hx, cx, output, hy, cy, grad_output, grad_hy, grad_cy,
        reverse, mode, hidden_size, num_layers, has_biases, train, bidirectional, batch_sizes, batch_first,
        workspace)
    if cuda_imitated() or grads[4] is None:
        return grads
    bias = grads[4]
    return (*grads[:4], torch.empty_strided(bias.shape, bias.stride(), dtype=bias.dtype, device=bias.device),
            *grads[5:])


# --- unfold / fold: the output is allocated like the input, then resized -------------------------

def _allocated_then_resized(tensor: torch.Tensor, elements: int, shape: tuple[int, ...] | None = None
                            ) -> torch.Tensor:
    """What a real kernel makes with `at::empty({elements})` then `resize_(shape)`: `shape`
    (default `tensor`'s) with contiguous strides and `tensor`'s dtype, on a storage of
    max(elements, shape's) elements (resize_ grows a storage, never shrinks it)."""
    return torch.empty(elements, dtype=tensor.dtype, device=tensor.device).resize_(shape or tensor.shape)


def im2col(input, kernel_size, dilation, padding, stride):
    """`aten.im2col` (`F.unfold`), allocated as the real kernel allocates it (`empty_like` the
    input, then resized)."""
    return _allocated_then_resized(aten.im2col.default(input, kernel_size, dilation, padding, stride), input.numel())


def col2im(input, output_size, kernel_size, dilation, padding, stride):
    """`aten.col2im` (`F.fold`, the backward of `F.unfold`), allocated as the real kernel
    allocates it (`empty_like` the input, then resized)."""
    return _allocated_then_resized(
        aten.col2im.default(input, output_size, kernel_size, dilation, padding, stride), input.numel())


# --- norms: fp32 statistics for a low-precision input with fp32 parameters -----------------------

def _is_mixed(input: torch.Tensor, *parameters: torch.Tensor | None) -> bool:
    """The real kernels' "mixed type" (mixed_data_type.h, `is_mixed_type`): the first given
    parameter's dtype differs from the input's."""
    first = next((p for p in parameters if p is not None), None)
    return first is not None and first.dtype != input.dtype


def _with_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A fresh tensor with `tensor`'s sizes and strides in `dtype` (its own storage, as the real
    kernel's `at::empty` statistics have)."""
    if tensor.dtype == dtype:
        return tensor
    return torch.empty_strided(tensor.shape, tensor.stride(), dtype=dtype, device=tensor.device)


def _fp32_statistics(result: tuple, statistics: tuple[int, ...], mixed: bool) -> tuple:
    """`result` with the outputs at positions `statistics` in fp32 when the call was mixed."""
    if not mixed:
        return result
    return tuple(_with_dtype(t, torch.float32) if i in statistics else t for i, t in enumerate(result))


def _running_dtype(result: tuple, positions: tuple[int, ...], running_mean, running_var) -> tuple:
    """The functional variants return the updated running statistics in their own dtype."""
    dtypes = {positions[0]: running_mean, positions[1]: running_var}
    return tuple(_with_dtype(t, dtypes[i].dtype) if i in dtypes and dtypes[i] is not None else t
                 for i, t in enumerate(result))


_NORM_PARAMETERS = ("weight", "bias", "running_mean", "running_var")


@functools.cache
def _argument_names(op) -> tuple[str, ...]:
    return tuple(argument.name for argument in op._schema.arguments)


def storage_layout(tensor: torch.Tensor | None) -> tuple | None:
    """What a fake kernel must reproduce of a real kernel's output: shape, strides, dtype and
    storage bytes (the bytes it holds, and whether a later op copies it). None for None."""
    if tensor is None:
        return None
    return tuple(tensor.shape), tuple(tensor.stride()), str(tensor.dtype), tensor.untyped_storage().nbytes()


def bound_arguments(op, args: tuple, kwargs: dict) -> dict:
    """An op's arguments by their names in its schema (dispatch passes most positionally)."""
    return {**dict(zip(_argument_names(op), args)), **kwargs}


def fp32_statistics_kernel(op, running_outputs: tuple[int, int] | None = None) -> Callable[..., tuple]:
    """A fake kernel for the norm `op` (outputs 1 and 2: saved mean and inverse std) that keeps
    the statistics in fp32 when the call is mixed (see the module docstring); with
    `running_outputs`, the positions of a functional variant's updated running statistics, which
    keep the running statistics' dtype. Arguments are read by their names in the op's schema."""

    def kernel(*args, **kwargs):
        bound = bound_arguments(op, args, kwargs)
        result = op(*args, **kwargs)
        mixed = _is_mixed(bound["input"], *(bound.get(name) for name in _NORM_PARAMETERS))
        result = _fp32_statistics(result, (1, 2), mixed)
        if running_outputs:
            result = _running_dtype(result, running_outputs, bound["running_mean"], bound["running_var"])
        return result

    kernel.__name__ = kernel.__qualname__ = f"fp32_statistics_{op.__name__.replace('.', '_')}"
    return kernel


def native_group_norm_backward(grad_out, input, mean, rstd, weight, N, C, HxW, group, output_mask):
    """`aten.native_group_norm_backward` with grad_input in the input's dtype, as the real
    kernel makes it."""
    grad_input, grad_weight, grad_bias = aten.native_group_norm_backward.default(
        grad_out, input, mean, rstd, weight, N, C, HxW, group, output_mask)
    if grad_input is not None:
        grad_input = _with_dtype(grad_input, input.dtype)
    return grad_input, grad_weight, grad_bias


# --- gradients the real kernels make contiguous, or like the input -----------------------------

def _in_format(tensor: torch.Tensor | None, like: torch.Tensor | None = None) -> torch.Tensor | None:
    """`tensor` as a fresh tensor with its sizes and dtype in the memory format the real kernel
    gives it: `like`'s suggested format (channels-last when `like` is), else contiguous.
    Returned as is when its strides are already those (or it is None: a gradient not asked for)."""
    memory_format = torch.contiguous_format if like is None else suggest_memory_format(like)
    if tensor is None or tensor.is_contiguous(memory_format=memory_format):
        return tensor
    return torch.empty_like(tensor, memory_format=memory_format)


def native_layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask):
    """`aten.native_layer_norm_backward` with contiguous gradients, as the real kernels make them."""
    return tuple(_in_format(grad) for grad in aten.native_layer_norm_backward.default(
        grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask))


def log_softmax_backward_data(grad_output, output, dim, input_dtype):
    """`aten._log_softmax_backward_data` with a contiguous grad_input, as the real kernels make it."""
    return _in_format(aten._log_softmax_backward_data.default(grad_output, output, dim, input_dtype))


def batch_norm_backward_kernel(op) -> Callable[..., tuple]:
    """A fake kernel for a batch norm backward `op` whose grad_input is laid out like the input
    (in its suggested memory format), as the real kernels make it."""

    def kernel(*args, **kwargs):
        grad_input, *parameter_grads = op(*args, **kwargs)
        return (_in_format(grad_input, bound_arguments(op, args, kwargs)["input"]), *parameter_grads)

    kernel.__name__ = kernel.__qualname__ = f"input_like_{op.__name__.replace('.', '_')}"
    return kernel


def gradient_like_kernel(op) -> Callable[..., torch.Tensor]:
    """A fake kernel for the elementwise backward `op` whose result is laid out like its incoming
    gradient (its first argument), as TensorIterator lays it out when that gradient is dense;
    otherwise torch's fake result."""

    def kernel(grad_output, *args, **kwargs):
        result = op(grad_output, *args, **kwargs)
        if result.stride() == grad_output.stride() or not is_non_overlapping_and_dense_or_false(grad_output):
            return result
        return torch.empty_like(grad_output, dtype=result.dtype)

    kernel.__name__ = kernel.__qualname__ = f"gradient_like_{op.__name__.replace('.', '_')}"
    return kernel


# --- reduced losses: the scalar keeps the elementwise loss's storage ----------------------------

def reduced_loss_kernel(op, elementwise: Callable[[dict], tuple[int, ...]]) -> Callable[..., torch.Tensor]:
    """A fake kernel for the loss `op` that, when it reduces (reduction mean or sum), gives the
    scalar loss a storage of the elementwise loss's size (`elementwise(arguments)`: its shape),
    as the real kernel leaves it (see the module docstring)."""

    def kernel(*args, **kwargs):
        loss = op(*args, **kwargs)
        bound = bound_arguments(op, args, kwargs)
        if bound.get("reduction", 1) == 0:  # Reduction::None: the elementwise loss itself
            return loss
        return _allocated_then_resized(loss, math.prod(elementwise(bound)), ())

    kernel.__name__ = kernel.__qualname__ = f"reduced_{op.__name__.replace('.', '_')}"
    return kernel


def _broadcast_of_input_and_target(bound: dict) -> tuple[int, ...]:
    return tuple(torch.broadcast_shapes(bound["self"].shape, bound["target"].shape))


def _input_shape(bound: dict) -> tuple[int, ...]:
    return tuple(bound["self"].shape)


# --- EmbeddingBag on the CPU: index buffers allocated one element longer, then shrunk ---------

def _bf16_fast_sum(bound: dict) -> bool:
    """The CPU kernel's fast path of a sum over bf16 weights (`is_fast_path_index_select` and its
    `_scale` twin take float, half and bfloat16; torch's meta kernel leaves bfloat16 out), which
    makes no `offset2bag`."""
    weight, scale = bound["weight"], bound.get("per_sample_weights")
    return (weight.dtype == torch.bfloat16 and bound.get("mode", 0) == 0 and weight.stride(1) == 1
            and bound.get("padding_idx", -1) < 0 and (scale is None or scale.stride(0) == 1))


def embedding_bag_kernel(op) -> Callable[..., tuple]:
    """A fake kernel for `aten._embedding_bag` (or its forward-only twin) that allocates as the
    CPU kernel does (EmbeddingBag.cpp, checked against it in tests/test_fake_kernels.py):
    `offset2bag`, when it is made (not on the fast path of a sum, bf16 weights included), on
    indices + 1 elements resized to indices; with
    `include_last_offset`, `bag_size` on one element per offset resized to one per bag, except
    that the forward-only kernel in sum mode leaves `bag_size` and `max_indices` at one per
    offset. Torch's fake result for the CUDA kinds."""
    forward_only = op is aten._embedding_bag_forward_only.default

    def kernel(*args, **kwargs):
        output, offset2bag, bag_size, max_indices = result = op(*args, **kwargs)
        if cuda_imitated():
            return result
        bound = bound_arguments(op, args, kwargs)
        if _bf16_fast_sum(bound):
            offset2bag = offset2bag.new_empty(0)  # the fast path makes none
        elif offset2bag.numel():
            offset2bag = _allocated_then_resized(offset2bag, offset2bag.numel() + 1)
        if bound.get("include_last_offset"):
            offsets = bound["offsets"].numel()
            if forward_only and bound.get("mode", 0) == 0:
                max_indices = torch.empty(offsets, dtype=max_indices.dtype, device=max_indices.device)
            else:
                bag_size = _allocated_then_resized(bag_size, offsets, (offsets - 1,))
        return output, offset2bag, bag_size, max_indices

    kernel.__name__ = kernel.__qualname__ = f"cpu_{op.__name__.replace('.', '_')}"
    return kernel


# A literal registry: op -> fake kernel taking the op's own arguments.
FAKE_KERNELS: dict[object, Callable[..., object]] = {
    aten._grouped_mm.default: grouped_mm,
    aten.mkldnn_rnn_layer.default: mkldnn_rnn_layer,
    aten.mkldnn_rnn_layer_backward.default: mkldnn_rnn_layer_backward,
    aten.im2col.default: im2col,
    aten.col2im.default: col2im,
    **{op: fp32_statistics_kernel(op) for op in (
        aten.native_batch_norm.default, aten._native_batch_norm_legit.default, aten._native_batch_norm_legit.no_stats,
        aten._native_batch_norm_legit_no_training.default, aten._batch_norm_with_update.default,
        aten._batch_norm_no_update.default, aten.native_layer_norm.default, aten.native_group_norm.default)},
    aten._native_batch_norm_legit_functional.default: fp32_statistics_kernel(
        aten._native_batch_norm_legit_functional.default, running_outputs=(3, 4)),
    aten._batch_norm_with_update_functional.default: fp32_statistics_kernel(
        aten._batch_norm_with_update_functional.default, running_outputs=(4, 5)),
    aten.native_group_norm_backward.default: native_group_norm_backward,
    aten.native_layer_norm_backward.default: native_layer_norm_backward,
    aten._log_softmax_backward_data.default: log_softmax_backward_data,
    **{op: gradient_like_kernel(op) for op in (
        aten.hardtanh_backward.default, aten.hardswish_backward.default, aten.logit_backward.default)},
    **{op: batch_norm_backward_kernel(op) for op in (
        aten.native_batch_norm_backward.default, aten.batch_norm_backward.default)},
    aten.mse_loss.default: reduced_loss_kernel(aten.mse_loss.default, _broadcast_of_input_and_target),
    aten.smooth_l1_loss.default: reduced_loss_kernel(aten.smooth_l1_loss.default, _broadcast_of_input_and_target),
    aten.binary_cross_entropy.default: reduced_loss_kernel(aten.binary_cross_entropy.default, _input_shape),
    aten.soft_margin_loss.default: reduced_loss_kernel(aten.soft_margin_loss.default, _input_shape),
    aten._embedding_bag.default: embedding_bag_kernel(aten._embedding_bag.default),
    aten._embedding_bag_forward_only.default: embedding_bag_kernel(aten._embedding_bag_forward_only.default),
}

__all__ = ["FAKE_KERNELS", "MKLDNN_LSTM_MODE", "UnmodelledOp", "batch_norm_backward_kernel",
           "bound_arguments", "col2im", "cuda_imitated", "embedding_bag_kernel", "fp32_statistics_kernel",
           "gradient_like_kernel", "grouped_mm", "im2col", "imitating_cuda", "log_softmax_backward_data",
           "lstm_workspace_bytes", "mkldnn_rnn_layer", "mkldnn_rnn_layer_backward",
           "native_group_norm_backward", "native_layer_norm_backward", "op_name", "reduced_loss_kernel"]
