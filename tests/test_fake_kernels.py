"""What fake tensors cannot do, done for the estimate: fake kernels equal to the real op,
data-dependent ops resolved from known values, MoE routing from a named assumption, and a
one-line refusal naming the op for what cannot be modelled."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from accumbench.cases import Case
from accumbench.estimate import estimate_cases, estimate_runner
from accumbench.estimate_assumptions import assumptions_for
from accumbench.meters.cuda_autocast import cuda_autocast_policy
from accumbench.meters.fake_kernels import (
    FAKE_KERNELS,
    MKLDNN_LSTM_MODE,
    UnmodelledOp,
    cuda_imitated,
    grouped_mm,
    imitating_cuda,
    lstm_workspace_bytes,
    storage_layout,
)
from accumbench.meters.estimate import fake_modules_convert_in_place
from accumbench.meters.known_values import KnownValues, known_tensors_look_real, routing_indices
from accumbench.runner import Runner

TOY = str(Path(__file__).parent / "workloads" / "toy_moe.py")
RNN = str(Path(__file__).parent / "workloads" / "toy_rnn.py")
LOSSES = str(Path(__file__).parent / "workloads" / "toy_losses.py")
aten = torch.ops.aten
# bf16 LSTMs run on oneDNN only where the CPU has bf16 instructions (torch's use_mkldnn).
ONEDNN_BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
needs_onednn_bf16 = pytest.mark.skipif(not ONEDNN_BF16, reason="no oneDNN bf16 on this CPU")

pytestmark = pytest.mark.usefixtures("one_thread")


def real_and_fake(op, *args) -> tuple[list, list]:
    """Layouts of every output of `op` on real tensors and of its fake kernel (FAKE_KERNELS) on
    fake copies of them."""
    real = op(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = FAKE_KERNELS[op](*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    as_list = lambda out: list(out) if isinstance(out, (tuple, list)) else [out]  # noqa: E731
    return [storage_layout(t) for t in as_list(real)], [storage_layout(t) for t in as_list(fake)]


# --- grouped_mm: the fake kernel allocates what the real CPU kernel allocates ------------------

GROUPED = [  # (mat_a, mat_b, offsets): 2D x 3D (MoE forward), 2D x 2D (weight gradient), 3D x 3D, 3D x 2D
    ((10, 16), (3, 16, 12), [3, 3, 10]),
    ((10, 16), (3, 16, 20), [3, 3, 10]),
    ((16, 10), (10, 12), [3, 3, 10]),
    ((3, 10, 16), (3, 16, 12), None),
    ((3, 10, 16), (16, 20), None),
    ((10, 8), (3, 8, 13), [3, 3, 10]),  # unaligned strides: the real kernel refuses them
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("a_shape,b_shape,offsets", GROUPED)
def test_grouped_mm_fake_kernel_allocates_what_the_real_kernel_does(dtype, a_shape, b_shape, offsets):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(a_shape, generator=g).to(dtype), torch.randn(b_shape, generator=g).to(dtype)
    if len(a_shape) == 3 and len(b_shape) == 2:  # 3D x 2D: mat_b's columns split into groups
        b = torch.randn(b_shape[0], 3 * b_shape[1], generator=g).to(dtype)
        offsets = [b_shape[1], 2 * b_shape[1], 3 * b_shape[1]]
        a = torch.randn(3, a_shape[1], a_shape[2], generator=g).to(dtype)
    offs = torch.tensor(offsets, dtype=torch.int32) if offsets else None
    try:
        real = storage_layout(torch._grouped_mm(a, b, offs))
    except RuntimeError:
        real = None
    mode = FakeTensorMode()
    with mode:
        fa, fb = mode.from_tensor(a), mode.from_tensor(b)
        fo = mode.from_tensor(offs) if offs is not None else None
        try:
            fake = storage_layout(grouped_mm(fa, fb, fo))
        except RuntimeError:
            fake = None
    assert fake == real


def test_grouped_mm_runs_in_fp32_under_the_estimate():
    a, w, offs = torch.randn(10, 16), torch.randn(3, 12, 16, requires_grad=True), torch.tensor([3, 3, 10], dtype=torch.int32)
    with FakeTensorMode(allow_non_fake_inputs=True), KnownValues():
        fw = torch.empty(3, 12, 16, requires_grad=True)
        y = torch.nn.functional.grouped_mm(a, fw.transpose(-2, -1), offs=offs)
        (y * y).sum().backward()
        assert fw.grad.shape == w.shape and y.dtype == torch.float32


# --- LSTM on the CPU: oneDNN's training workspace --------------------------------------------------

def lstm_layer_args(seq, batch, inputs, hidden, dtype, reverse=False, batch_first=False):
    """The arguments nn.LSTM passes `aten.mkldnn_rnn_layer` for one layer and direction (its
    input already (seq, batch, features))."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    return (rand(seq, batch, inputs), rand(4 * hidden, inputs), rand(4 * hidden, hidden), rand(4 * hidden),
            rand(4 * hidden), rand(batch, hidden), rand(batch, hidden), reverse, [], MKLDNN_LSTM_MODE, hidden, 1,
            True, False, batch_first, True)


LSTM_SHAPES = [  # (seq, batch, input, hidden): odd sizes, leading dimensions padded past 256, one step
    (1, 1, 7, 5), (5, 3, 10, 12), (16, 4, 32, 32), (12, 17, 64, 64), (3, 2, 256, 96), (7, 5, 40, 130),
]


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_onednn_bf16)])
@pytest.mark.parametrize("shape", LSTM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_lstm_layer_fake_kernel_allocates_the_real_workspace(dtype, shape):
    args = lstm_layer_args(*shape, dtype, reverse=shape[0] % 2 == 0, batch_first=shape[1] % 2 == 1)
    real, fake = real_and_fake(aten.mkldnn_rnn_layer.default, *args)
    assert fake == real
    assert real[3][3] == lstm_workspace_bytes(*shape, dtype) > 0


def test_lstm_layer_without_grad_mode_has_no_workspace():
    args = lstm_layer_args(5, 3, 10, 12, torch.float32)
    with torch.no_grad():
        real, fake = real_and_fake(aten.mkldnn_rnn_layer.default, *args)
    assert real[3] is None and fake[3][3] == 0  # the real kernel returns an undefined tensor
    assert fake[:3] == real[:3]


@pytest.mark.parametrize("shape", [(5, 3, 10, 12), (4, 2, 8, 70)], ids=lambda s: "x".join(map(str, s)))
def test_lstm_layer_backward_returns_the_bias_gradients_on_two_storages(shape):
    args = lstm_layer_args(*shape, torch.float32)
    output, hy, cy, workspace = aten.mkldnn_rnn_layer.default(*args)
    backward = (*args[:7], output, hy, cy, torch.randn_like(output), torch.randn_like(hy), torch.randn_like(cy),
                False, MKLDNN_LSTM_MODE, shape[3], 1, True, True, False, [], False, workspace)
    real, fake = real_and_fake(aten.mkldnn_rnn_layer_backward.default, *backward)
    assert fake == real
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        grads = FAKE_KERNELS[aten.mkldnn_rnn_layer_backward.default](
            *[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in backward])
        assert grads[3].untyped_storage()._cdata != grads[4].untyped_storage()._cdata


def test_the_cuda_kinds_keep_torchs_lstm_results_and_the_device_generic_fixes():
    args = lstm_layer_args(5, 3, 10, 12, torch.float32)
    x, w = torch.randn(2, 8, 4, 4).bfloat16(), torch.ones(8)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        assert not cuda_imitated()
        with cuda_autocast_policy():  # what the estimate enters for the CUDA kinds
            assert cuda_imitated()
            workspace = FAKE_KERNELS[aten.mkldnn_rnn_layer.default](*fake)[3]
            # cuDNN's batch norm keeps fp32 statistics for a bf16 input too.
            _, mean, _ = FAKE_KERNELS[aten.native_batch_norm.default](
                mode.from_tensor(x), w, w, None, None, True, 0.1, 1e-5)
        assert not cuda_imitated()
        with imitating_cuda(), imitating_cuda():
            pass
        assert not cuda_imitated()
    assert workspace.untyped_storage().nbytes() == 0 and mean.dtype == torch.float32


# --- unfold / fold: the larger of input and output ---------------------------------------------------

UNFOLDS = [  # (input shape, kernel, dilation, padding, stride): output smaller than the input, larger,
    ((2, 8, 16, 16), (3, 3), (1, 1), (0, 0), (6, 6)),  # equal; unbatched; dilated and padded
    ((2, 8, 16, 16), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 3, 4, 4), (1, 1), (1, 1), (0, 0), (1, 1)),
    ((8, 16, 16), (5, 5), (1, 1), (0, 0), (4, 4)),
    ((1, 3, 5, 7), (2, 3), (2, 1), (1, 0), (1, 2)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("shape,kernel,dilation,padding,stride", UNFOLDS)
def test_unfold_and_fold_allocate_what_the_real_kernels_do(dtype, transposed, shape, kernel, dilation, padding,
                                                           stride):
    x = torch.randn(shape).to(dtype)
    x = x.transpose(-1, -2) if transposed else x
    real, fake = real_and_fake(aten.im2col.default, x, kernel, dilation, padding, stride)
    assert fake == real
    cols = torch.randn(real[0][0]).to(dtype)
    real, fake = real_and_fake(aten.col2im.default, cols, x.shape[-2:], kernel, dilation, padding, stride)
    assert fake == real


# --- EmbeddingBag: offset2bag and bag_size on longer storages ------------------------------------

@pytest.mark.parametrize("op", [aten._embedding_bag.default, aten._embedding_bag_forward_only.default])
@pytest.mark.parametrize("mode", [0, 1, 2], ids=["sum", "mean", "max"])
@pytest.mark.parametrize("include_last_offset", [False, True])
@pytest.mark.parametrize("padding_idx", [-1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).replace("torch.", ""))
def test_embedding_bag_allocates_what_the_real_kernel_does(op, mode, include_last_offset, padding_idx, dtype):
    weight, indices = torch.randn(10, 4).to(dtype), torch.tensor([1, 2, 4, 5, 4, 3, 2])
    offsets = torch.tensor([0, 2, 4, 7] if include_last_offset else [0, 2, 4])
    per_sample = torch.rand(7).to(dtype) if mode == 0 else None
    real, fake = real_and_fake(op, weight, indices, offsets, False, mode, False, per_sample, include_last_offset,
                               padding_idx)
    assert fake == real


# --- norms: fp32 statistics for a bf16/fp16 input with fp32 parameters -------------------------------

def batch_norm_calls(x, w, b, rm, rv):
    """Every batch-norm op with its arguments (running statistics cloned: some update them)."""
    r = lambda t: None if t is None else t.clone()  # noqa: E731
    return [
        (aten.native_batch_norm.default, x, w, b, r(rm), r(rv), True, 0.1, 1e-5),
        (aten.native_batch_norm.default, x, w, b, r(rm), r(rv), False, 0.1, 1e-5),
        (aten.native_batch_norm.default, x, w, b, None, None, True, 0.1, 1e-5),
        (aten.native_batch_norm.default, x, None, None, r(rm), r(rv), True, 0.1, 1e-5),
        (aten._native_batch_norm_legit.default, x, w, b, r(rm), r(rv), True, 0.1, 1e-5),
        (aten._native_batch_norm_legit.no_stats, x, w, b, True, 0.1, 1e-5),
        (aten._native_batch_norm_legit_no_training.default, x, w, b, r(rm), r(rv), 0.1, 1e-5),
        (aten._native_batch_norm_legit_functional.default, x, w, b, r(rm), r(rv), True, 0.1, 1e-5),
        (aten._batch_norm_with_update.default, x, w, b, r(rm), r(rv), 0.1, 1e-5),
        (aten._batch_norm_with_update_functional.default, x, w, b, r(rm), r(rv), 0.1, 1e-5),
        (aten._batch_norm_no_update.default, x, w, b, r(rm), r(rv), 0.1, 1e-5),
    ]


NORM_DTYPES = [  # (input, parameters): mixed (autocast) and not
    (torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.float32),
]


@pytest.mark.parametrize("dtype,param_dtype", NORM_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_norm_fake_kernels_allocate_what_the_real_kernels_do(dtype, param_dtype, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 4, 4, generator=g).to(dtype)
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    w, b = torch.rand(8, generator=g).to(param_dtype) + 0.5, torch.randn(8, generator=g).to(param_dtype)
    rm, rv = torch.zeros(8, dtype=param_dtype), torch.ones(8, dtype=param_dtype)
    calls = batch_norm_calls(x, w, b, rm, rv) + [
        (aten.native_group_norm.default, x, w, b, 2, 8, 16, 4, 1e-5),
        (aten.native_group_norm.default, x, None, None, 2, 8, 16, 2, 1e-5),
    ]
    for shape, normalized in (((3, 5, 8), [8]), ((2, 3, 2, 4), [2, 4])):
        xl = torch.randn(shape, generator=g).to(dtype)
        wl = torch.rand(normalized, generator=g).to(param_dtype)
        bl = torch.rand(normalized, generator=g).to(param_dtype)
        calls += [(aten.native_layer_norm.default, xl, normalized, wl, bl, 1e-5),
                  (aten.native_layer_norm.default, xl, normalized, None, None, 1e-5)]
    _, mean, rstd = aten.native_group_norm.default(x, w, b, 2, 8, 16, 2, 1e-5)
    grad = torch.randn(x.shape, generator=g).to(dtype)
    grad = grad.to(memory_format=torch.channels_last) if channels_last else grad
    # (The real kernel crashes on a channels-last input when no grad_input is asked for.)
    masks = [[True, True, True], [True, False, False]] + ([] if channels_last else [[False, True, True]])
    calls += [(aten.native_group_norm_backward.default, grad, x, mean, rstd, w, 2, 8, 16, 2, mask) for mask in masks]
    for op, *args in calls:
        real, fake = real_and_fake(op, *args)
        assert fake == real, op


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).replace("torch.", ""))
def test_gradients_are_laid_out_as_the_real_kernels_lay_them(dtype):
    """A transposed incoming gradient: the real kernels still return contiguous (layer norm,
    log-softmax) or input-like (batch norm) gradients, where torch's meta kernels follow the
    gradient; elementwise ones follow the gradient, where the meta kernels follow the input."""
    g = torch.Generator().manual_seed(0)
    transposed = lambda *shape: torch.randn(*shape, generator=g).to(dtype).transpose(-1, -2)  # noqa: E731
    x = torch.randn(2, 5, 6, generator=g).to(dtype)
    w, b = torch.rand(6, generator=g).to(dtype), torch.rand(6, generator=g).to(dtype)
    _, mean, rstd = aten.native_layer_norm.default(x, [6], w, b, 1e-5)
    x2 = torch.randn(2, 3, 4, generator=g).to(dtype)  # normalized over two dimensions
    w2 = torch.rand(3, 4, generator=g).to(dtype)
    _, mean2, rstd2 = aten.native_layer_norm.default(x2, [3, 4], w2, w2, 1e-5)
    logits = torch.randn(4, 7, generator=g).to(dtype).log_softmax(1)
    calls = [
        (aten.native_layer_norm_backward.default, transposed(2, 6, 5), x, [6], mean, rstd, w, b, [True] * 3),
        (aten.native_layer_norm_backward.default, transposed(2, 6, 5), x, [6], mean, rstd, None, None,
         [True, False, False]),
        (aten.native_layer_norm_backward.default, transposed(2, 4, 3), x2, [3, 4], mean2, rstd2, w2, w2, [True] * 3),
        (aten._log_softmax_backward_data.default, transposed(7, 4), logits, 1, dtype),
    ]
    for grad, value in ((transposed(5, 6), torch.randn(6, 5, generator=g).to(dtype)),
                        (torch.randn(6, 5, generator=g).to(dtype), transposed(5, 6)),
                        (torch.randn(1, 5, generator=g).to(dtype).expand(6, 5), transposed(5, 6))):
        calls += [(aten.hardtanh_backward.default, grad, value, 0.0, 6.0),
                  (aten.hardswish_backward.default, grad, value),
                  (aten.logit_backward.default, grad, value.sigmoid(), None)]
    for memory_format in (torch.contiguous_format, torch.channels_last):
        xb = torch.randn(2, 3, 4, 5, generator=g).to(dtype).contiguous(memory_format=memory_format)
        wb, rm, rv = torch.rand(3, generator=g).to(dtype) + 0.5, torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype)
        _, save_mean, save_invstd = aten.native_batch_norm.default(xb, wb, None, rm, rv, True, 0.1, 1e-5)
        grad = torch.randn(2, 3, 5, 4, generator=g).to(dtype).transpose(2, 3)
        calls += [(aten.native_batch_norm_backward.default, grad, xb, wb, rm, rv, save_mean, save_invstd, True, 1e-5,
                   [True] * 3),
                  (aten.batch_norm_backward.default, grad, xb, wb, rm, rv, save_mean, save_invstd, True, 1e-5,
                   [True] * 3, torch.empty(0, dtype=torch.uint8))]
    for op, *args in calls:
        real, fake = real_and_fake(op, *args)
        assert fake == real, op


LOSS_OPS = [aten.mse_loss.default, aten.smooth_l1_loss.default, aten.binary_cross_entropy.default,
            aten.soft_margin_loss.default]


@pytest.mark.parametrize("op", LOSS_OPS, ids=lambda op: op.__name__)
@pytest.mark.parametrize("reduction", [0, 1, 2], ids=["none", "mean", "sum"])
@pytest.mark.parametrize("target_shape", [(4, 6), (1, 6)], ids=["same", "broadcast"])
def test_a_reduced_loss_keeps_the_storage_the_real_kernel_leaves_it(op, reduction, target_shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 6, generator=g) * 0.8 + 0.1  # in (0, 1): binary cross-entropy's domain
    target = torch.rand(target_shape, generator=g)
    if op in (aten.binary_cross_entropy.default, aten.soft_margin_loss.default):
        target = target.expand(4, 6).contiguous()  # these two take a target of the input's shape
    weight = (None,) if op is aten.binary_cross_entropy.default else ()  # its third argument
    real, fake = real_and_fake(op, x, target, *weight, reduction)
    assert fake == real
    assert real[0][3] == 4 * 6 * 4  # reduced or not, a storage for every element of the elementwise loss


# --- end to end: where these kernels matter, the estimate equals the cpu meter to the byte -------

TINY = (("size", "tiny"),)
BYTE_EQUAL = [  # estimate - cpu meter before these kernels: -105,988 B, -204,164 B, -744 B, -192 B, +4,176 B,
    # -16,380 B (the mean squared error's storage, 16 x 256 floats, at the peak that starts the backward)
    Case(f"{RNN}:lstm", "accumulated", 2, 2, warmup=1, steps=1),
    Case(f"{RNN}:lstm", "accumulated", 2, 2, (("bidirectional", True),), warmup=1, steps=1, amp="bf16"),
    Case(f"{RNN}:unfold", "accumulated", 2, 2, warmup=1, steps=1),
    Case("convnet-bn", "accumulated", 2, 2, TINY, warmup=1, steps=1, amp="bf16"),
    Case("convnet-gn", "accumulated", 2, 2, TINY, warmup=1, steps=1, amp="bf16"),
    Case(f"{LOSSES}:regression", "large-batch", 16, 1, (("loss", "mse"),), warmup=1, steps=1),
]


@pytest.mark.parametrize("the_case", BYTE_EQUAL, ids=lambda c: f"{c.workload.rpartition('/')[2]}-"
                         f"{'bi-' if dict(c.options).get('bidirectional') else ''}{c.amp}")
def test_estimate_equals_the_cpu_meter_to_the_byte_with_lstm_unfold_and_autocast_norms(the_case):
    measured = Runner(torch.device("cpu")).measure(the_case)
    estimated = estimate_runner(assumptions_for("cpu")).measure(the_case)
    assert measured.status == estimated.status == "ok", (measured.error, estimated.error)
    assert (estimated.peak_allocated, estimated.baseline_allocated, estimated.breakdown) == (
        measured.peak_allocated, measured.baseline_allocated, measured.breakdown)


# --- data-dependent ops from known values --------------------------------------------------------

def test_data_dependent_ops_take_the_real_result_sizes_and_bytes():
    mask = torch.tensor([[0, 3, 0, 2], [1, 0, 0, 0]])
    with FakeTensorMode(allow_non_fake_inputs=True), KnownValues():
        known = mask * 2  # fake, value known
        nonzero, rows, unique = torch.nonzero(known), torch.where(known > 0)[0], torch.unique(known)
        count = int((known > 0).sum().item())
    assert storage_layout(nonzero) == storage_layout(torch.nonzero(mask * 2))
    assert storage_layout(rows) == storage_layout(torch.where(mask > 0)[0]) and storage_layout(unique) == storage_layout(torch.unique(mask * 2))
    assert count == 3


def test_a_float_mask_from_the_batch_keeps_its_value_past_1_mib_except_while_building():
    # Longformer reads `.any().item()` of a (batch, 1, seq, seq) float mask made from the batch's
    # attention mask: at batch 2 and seq 512 it is 2 MiB, past the 1 MiB kept while the model is built.
    attention = torch.ones(2, 512, dtype=torch.long)
    with FakeTensorMode(allow_non_fake_inputs=True), KnownValues() as values:
        mask = (attention[:, None, None, :] * torch.ones(2, 1, 512, 1)).float()  # 2 MiB of known floats
        assert bool((mask > 0).flatten().any().item())
        with values.building():
            weight = torch.ones(2, 1, 512, 512)
        assert values.value_of(weight) is None and values.value_of(torch.ones(512, 512)) is not None


def test_a_module_converted_to_what_it_is_keeps_its_fake_parameters():
    # Switch Transformers casts its router to the router dtype in every forward; torch swaps a
    # fake parameter with its conversion, which fails when that is the parameter itself.
    with fake_modules_convert_in_place():
        with FakeTensorMode():
            layer = torch.nn.Linear(4, 4)
            weight = layer.weight
            assert layer.to(torch.float32) is layer and layer.weight is weight
        real = torch.nn.Linear(4, 4)
        assert real.to(torch.float64).weight.dtype == torch.float64  # a conversion that converts is torch's


def test_a_known_scalar_formats_as_its_value():
    # Switch Transformers runs `self[f"expert_{index}"]` with a 0-dim tensor index.
    with FakeTensorMode(allow_non_fake_inputs=True), KnownValues() as values, known_tensors_look_real(values):
        index = torch.tensor([2, 5])[1] + 0
        assert f"expert_{index}" == "expert_5"
        weight = torch.ones(())
        values.forget([weight])  # a weight's value: unknown to the estimate
        assert f"{weight}".startswith("FakeTensor")  # formats as before


def test_routing_assumptions():
    balanced = routing_indices((6, 4), -1, 4, 2, "balanced")
    assert balanced.tolist() == [[0, 1], [2, 3], [0, 1], [2, 3], [0, 1], [2, 3]]
    assert torch.bincount(balanced.flatten(), minlength=4).tolist() == [3, 3, 3, 3]
    assert routing_indices((6, 4), -1, 4, 2, "worst").tolist() == [[0, 1]] * 6
    with pytest.raises(ValueError, match="moe_routing"):
        assumptions_for("cpu", {"moe_routing": "random"})
    assert assumptions_for("h100", {"moe_routing": "worst"}).describe()["moe_routing"] == "worst"


# --- MoE routing: the estimate equals the cpu meter where the cpu meter's routing is the assumption -

def toy_case(route: str, scenario: str = "accumulated", accum: int = 2, **options) -> Case:
    return Case(f"{TOY}:build", scenario, 2, accum, (("route", route), *options.items()), warmup=1, steps=1)


@pytest.mark.parametrize("routing", ["balanced", pytest.param("worst", marks=pytest.mark.slow)])
def test_moe_estimate_is_byte_equal_when_the_routing_is_the_assumption(routing):
    the_case = toy_case(routing)
    measured = Runner(torch.device("cpu")).measure(the_case)
    estimated = estimate_runner(assumptions_for("cpu", {"moe_routing": routing})).measure(the_case)
    assert measured.status == estimated.status == "ok", (measured.error, estimated.error)
    assert (estimated.peak_allocated, estimated.baseline_allocated, estimated.breakdown) == (
        measured.peak_allocated, measured.baseline_allocated, measured.breakdown)
    assert estimated.assumptions["moe_routing"] == routing
    peaks = estimated.assumptions["moe_routing_peaks"]
    assert set(peaks) == {"balanced", "worst"} and peaks[routing] == estimated.peak_allocated
    assert f"moe-routing-{routing}" in estimated.assumptions["applied"]


@pytest.mark.slow  # two cpu runs and two estimates of three routings' steps each: ~6 s on 2 cores
def test_each_routings_peak_is_that_of_a_run_routed_so_whichever_routing_is_assumed():
    # The peak under the routing not assumed was profiled on the state the assumed one left:
    # optimizer state for the experts it trained, and none for the others.
    measured = {routing: Runner(torch.device("cpu")).measure(toy_case(routing, separate=True)).peak_allocated
                for routing in ("balanced", "worst")}
    assert measured["balanced"] != measured["worst"]
    for assumed in ("balanced", "worst"):
        estimated = estimate_runner(assumptions_for("cpu", {"moe_routing": assumed})).measure(
            toy_case(assumed, separate=True))
        assert estimated.assumptions["moe_routing_peaks"] == measured, assumed
        assert estimated.peak_allocated == measured[assumed]


@pytest.mark.slow
def test_moe_routing_bounds_differ_and_grouped_estimates_state_them():
    cases = [toy_case("learned", "large-batch", 1), toy_case("learned")]
    records = estimate_cases(cases, assumptions_for("cpu"))
    assert [r.status for r in records] == ["ok", "ok"]
    peaks = records[1].assumptions["moe_routing_peaks"]
    assert peaks["balanced"] != peaks["worst"], "routing decides sizes here: the bounds differ"
    assert records[1].peak_allocated == peaks["balanced"]
    # The report's memory table shows both bounds beside the peak.
    from accumbench.records import records_to_frame
    from accumbench.report.data import prepare
    from accumbench.report.tables import memory_table

    cells = memory_table(prepare(records_to_frame(records))[0]).column("peak allocated")
    assert sum("MoE routing: balanced" in cell.text and "worst" in cell.text for cell in cells) == 1


def test_a_step_without_routing_states_the_assumption_and_no_bounds():
    record = estimate_runner(assumptions_for("cpu")).measure(
        Case("mlp", "large-batch", 2, 1, (("size", "tiny"),), warmup=1, steps=1))
    assert record.status == "ok" and record.assumptions["moe_routing"] == "balanced"
    assert "moe_routing_peaks" not in record.assumptions


# --- what cannot be modelled: one line naming the op ----------------------------------------------

def test_reading_an_activation_value_is_refused_in_one_line_naming_the_op():
    record = estimate_runner(assumptions_for("cpu")).measure(
        Case(f"{TOY}:reads_activations", "large-batch", 2, 1, warmup=1, steps=1))
    assert record.status == "error"
    assert "\n" not in record.error
    assert record.error.startswith("UnmodelledOp: the estimate cannot model aten._local_scalar_dense (.item())")


@torch.library.custom_op("accumbench_test::opaque", mutates_args=())
def opaque(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def test_an_op_without_fake_kernel_is_refused_naming_the_op():
    values = KnownValues()
    with FakeTensorMode(allow_non_fake_inputs=True), values:
        weight = torch.empty(4, 4)
        values.forget([weight])  # value unknown, as a model's weights are
        with pytest.raises(UnmodelledOp, match=r"^the estimate cannot model accumbench_test\.opaque: ") as caught:
            opaque(weight)
        assert "\n" not in str(caught.value)
        assert opaque(torch.ones(2)).shape == (2,)  # known values: it runs for real
