"""Predict how long a training step takes on a device, from the ops of its fake step.

The estimate meter runs the case's step on fake tensors. Every aten op it dispatches is tallied
here (`OpTally`, fed by the meter's tracker): whether it launches a kernel (views and other
metadata ops do not), its FLOPs (`torch.utils.flop_counter`'s registry: matmuls, convolutions,
attention; plus the CPU attention kernel the fake step runs in place of CUDA's, and grouped
GEMMs, which the registry lacks), the bytes it reads and writes (the sizes of its tensor
inputs, its outputs and what it writes in place, so dtype-aware: AdamW's foreach ops return
nothing but rewrite every parameter and state), the dtype its FLOPs run in, and the micro-step
it belongs to. `predict_step_time` turns that `OpTable` into
seconds with a small model of an eager CUDA step, whose constants (`SpeedConstants`) are named
per device kind in `accumbench.estimate_assumptions`:

- Host: Python, autograd and the dispatcher issue the ops one after another. Each op costs
  `host_op_seconds` (views included: they are dispatched too), each kernel launch
  `launch_seconds` more, and a foreach op `host_tensor_seconds` per tensor in its lists (the
  optimizer step's per-parameter host work). Once per optimizer step, before its first op,
  `step_host_seconds` stands for the host work no aten op shows: `optimizer.step()`'s own
  Python (grouping the parameters, reading the step counters), `zero_grad`, the training loop.
  Small micro-batches are bound here: the device waits for the host.
- Device: each kernel takes its roofline time, max(FLOPs / (flop_efficiency x the peak FLOP/s
  of its dtype), bytes / (bandwidth_efficiency x memory bandwidth)), with
  conv_flop_efficiency in place of flop_efficiency for cuDNN's convolutions and
  `batch_norm_bandwidth` (bytes/s) in place of the bandwidth term for batch norm computing batch
  statistics (its per-channel reductions leave most of the device idle: on an H200 it moved the
  bytes counted here at 6% of the peak bandwidth, results/NVIDIA-H200/steptime/norm_kernels.csv),
  and at least `kernel_floor_seconds` (a kernel's fixed start-up and tail on the device).
- Overlap as a CUDA stream has it: a kernel starts when the host has launched it and the
  previous kernel has finished. The step starts with the device idle and ends when the host is
  done and the last kernel has finished. The harness does not synchronise between timed steps,
  so a step could start with the previous one's kernels still queued; modelled that way (a
  step takes max(host, device busy) in steady state) the held-out error on the H100 run grew
  (median 8.8% against 7.5%, worst 54% against 51%), so each step starts idle here.
- The host-to-device copy of each micro-batch (the fake step sees a copy of a host tensor) runs
  on the stream at `host_to_device_bandwidth`.
- Accumulation: where micro-steps 3..N repeat micro-step 2 (`accumbench.estimate` checks it),
  the fake step runs two micro-steps and the second one's ops are repeated for micro-steps
  3..N, before the optimizer step's ops; otherwise it runs all N.

What it cannot see:
- kernel fusion, and the real kernel count of an op (a CUDA op may launch several kernels;
  foreach optimizer ops are chunked);
- cuDNN's and cuBLAS's algorithm choice and their efficiency at a given shape (one efficiency
  for all GEMMs and attention, measured on GPT-2's MLP GEMM), and how well each memory-bound
  kernel uses the bandwidth (one efficiency for all but batch norm, whose one rate was measured
  at the large ConvNet's shapes; GroupNorm's layers there came within 1.7x of the model);
- causal attention skipping masked blocks; caching-allocator calls (cudaMalloc on a first step);
- how the host work outside aten ops grows with the model: `step_host_seconds` is one figure
  per step whatever the parameter count. On the H100 a whole step took 2-4 ms more than its
  micro-steps for the ConvNets (26 parameter tensors) and GPT-2 (148), too noisy to fit a slope per
  parameter (`host_tensor_seconds` stays 0); on an H200 GPT-2's about 2 ms
  (results/NVIDIA-H200/). benchmarks/gpu/optimizer_step.py times the optimizer step alone to
  say where it goes. The data loader is not modelled;
- activation checkpointing's host work beyond the ops it recomputes: on an H200 checkpointing
  every block of GPT-2 cost 54-57% of samples/s at micro-batch 8 (host-bound) where the model
  says 23-24%; from micro-batch 32 up it cost 13-17%, predicted 12-13%
  (results/NVIDIA-H200/levers/);
- how grouped GEMMs (mixture-of-experts) perform: they run at the one GEMM efficiency. On an
  H200 an OLMoE-shaped model was predicted 12-46% too fast (results/NVIDIA-H200/moe/;
  results/estimate-vs-h100/README.md);
- GPU clocks and thermals, and syncs inside the step (the fp16 GradScaler's found-inf check runs
  without a sync on fake tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from accumbench.stats import StepTimes, throughput_ratio

VIEW, KERNEL, COPY_IN = 0, 1, 2  # op kinds: no kernel, a kernel, a host-to-device copy
DTYPES = ("none", "fp32", "tf32", "bf16", "fp16")  # the dtype an op's FLOPs run in
OUTSIDE = -1  # micro-step of ops outside the micro-steps (optimizer step, zero_grad)
# Ops that run on cuDNN: fp32 convolutions use TF32 there (torch.backends.cudnn.allow_tf32 is on
# by default); fp32 matmuls do not (torch.backends.cuda.matmul.allow_tf32 is off by default).
CONVOLUTIONS = frozenset({"convolution", "convolution_backward", "_convolution", "cudnn_convolution",
                          "_slow_conv2d_forward", "convolution_overrideable"})
# Batch-norm ops. In training mode (batch statistics) their kernels reduce each channel over
# batch and image: with few channels they use a small part of the device, so they get their own
# measured rate (`SpeedConstants.batch_norm_bandwidth`). In eval mode (running statistics) batch
# norm is elementwise and runs like any other op; the ops without a mode flag run in training only.
BATCH_NORMS = frozenset({"native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
                         "_batch_norm_with_update", "_batch_norm_with_update_functional", "cudnn_batch_norm",
                         "miopen_batch_norm", "native_batch_norm_backward", "batch_norm_backward",
                         "cudnn_batch_norm_backward", "miopen_batch_norm_backward"})
_MODE_FLAGS = ("training", "train", "update")
CPU_ATTENTION = "_scaled_dot_product_flash_attention_for_cpu"
CPU_ATTENTION_BACKWARD = "_scaled_dot_product_flash_attention_for_cpu_backward"
# Ops that launch no kernel: aliases, and reading a host scalar (AdamW's step counters stay on
# the host without `capturable`).
HOST_ONLY = frozenset({"detach", "lift_fresh", "_unsafe_view", "alias", "_local_scalar_dense"})
_DTYPE_CODE = {torch.bfloat16: DTYPES.index("bf16"), torch.float16: DTYPES.index("fp16"),
               torch.float32: DTYPES.index("fp32")}


def op_flops(func: Any, args: tuple, kwargs: dict, out: Any, cuda: bool) -> int:
    """FLOPs of one aten op as `FlopCounterMode` counts them on the device predicted for.

    With `cuda`, the CPU attention kernel the fake step runs in place of CUDA's flash or
    memory-efficient attention is counted with the same formula CUDA's kernels get
    (4*b*h*s_q*s_k*d forward, 2.5x that backward); `FlopCounterMode` on the CPU counts nothing
    for it, so without `cuda` neither does this (the cpu meter's count is matched).
    """
    packet = func.overloadpacket
    if packet in flop_registry:
        return int(flop_registry[packet](*args, **kwargs, out_val=out))
    if cuda:
        name = packet.__name__
        if name == CPU_ATTENTION:
            return int(sdpa_flop_count(args[0].shape, args[1].shape, args[2].shape))
        if name == CPU_ATTENTION_BACKWARD:
            return int(sdpa_backward_flop_count(args[0].shape, args[1].shape, args[2].shape, args[3].shape))
    return 0


def grouped_mm_flops(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> int:
    """FLOPs of `aten._grouped_mm` (mixture-of-experts GEMMs), which `torch.utils.flop_counter`
    has no formula for: two per multiply-add of each group's GEMM, every input row counted as
    routed (rows past the last offset, if any, are counted too)."""
    if a.dim() == 2 and b.dim() == 2:  # the groups split the contraction: out is (groups, m, n)
        return 2 * a.shape[0] * a.shape[1] * b.shape[1]
    return 2 * out.numel() * a.shape[-1]  # 2d x 3d, 3d x 3d, 3d x 2d: each output element, k long


def is_training_batch_norm(func: Any, args: tuple, kwargs: dict) -> bool:
    """True for a batch-norm op (forward or backward) that computes batch statistics: its
    schema's `training`/`train`/`update` flag, or always for the ops that have none."""
    if func.overloadpacket.__name__ not in BATCH_NORMS:
        return False
    for i, argument in enumerate(func._schema.arguments):
        if argument.name in _MODE_FLAGS:
            value = args[i] if i < len(args) else kwargs.get(argument.name, argument.default_value)
            return bool(value)
    return True


def written_arguments(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors an op writes through its arguments (`Tensor(a!)` or `Tensor(a!)[]` in its
    schema): `add_`'s self, the lists of an in-place foreach op, a fused optimizer's states."""
    schema = getattr(func, "_schema", None)
    if schema is None or not schema.is_mutable:
        return []
    written = []
    for i, argument in enumerate(schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(argument.name)
        written.extend(t for t in tree_leaves(value) if isinstance(t, torch.Tensor))
    return written


def written_in_place(func: Any, args: tuple, kwargs: dict, out: Any) -> list[torch.Tensor]:
    """The tensors an op writes through its arguments and does not return (`written_arguments`
    less its outputs): `_foreach_mul_` returns nothing; an in-place op that returns its `self`
    (`add_`) has it counted as its output already."""
    returned = {id(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
    return [t for t in written_arguments(func, args, kwargs) if id(t) not in returned]


def tensor_bytes(tree: Any) -> int:
    """Bytes of every tensor in a nested structure (numel x element size: what a kernel touches)."""
    return sum(t.numel() * t.element_size() for t in tree_leaves(tree) if isinstance(t, torch.Tensor))


@dataclass(frozen=True, eq=False)
class OpTable:
    """The ops of one fake step, one row per dispatched op, in order (see the module docstring).

    Columns: `kind` (VIEW, KERNEL, COPY_IN), `flops`, `nbytes` (read + written), `dtype` (index
    into DTYPES), `micro_step` (0-based; OUTSIDE for the optimizer step and zero_grad) and
    `convolution` (True for cuDNN's convolutions, which reach a lower fraction of peak than
    cuBLAS's GEMMs and get their own efficiency), `list_tensors` (how many tensors a foreach
    op's lists hold: the optimizer step's host work grows with the parameter count),
    `batch_norm` (True for batch norm computing batch statistics, forward or backward: its own
    rate, `SpeedConstants.batch_norm_bandwidth`).
    """

    kind: np.ndarray
    flops: np.ndarray
    nbytes: np.ndarray
    dtype: np.ndarray
    micro_step: np.ndarray
    convolution: np.ndarray
    list_tensors: np.ndarray
    batch_norm: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def micro_steps(self) -> int:
        """How many micro-steps the table holds."""
        return int(self.micro_step.max()) + 1 if len(self) and self.micro_step.max() >= 0 else 0

    def same_ops(self, other: "OpTable") -> bool:
        """True when both tables ran the same ops in the same order (sizes may differ)."""
        return (len(self) == len(other) and bool(np.array_equal(self.kind, other.kind))
                and bool(np.array_equal(self.dtype, other.dtype))
                and bool(np.array_equal(self.micro_step, other.micro_step))
                and bool(np.array_equal(self.convolution, other.convolution))
                and bool(np.array_equal(self.list_tensors, other.list_tensors))
                and bool(np.array_equal(self.batch_norm, other.batch_norm)))

    def interpolate(self, low_size: int, high: "OpTable", high_size: int, size: int) -> "OpTable":
        """The table at micro-batch `size`, each op's FLOPs and bytes on the straight line
        through this table (at `low_size`) and `high` (at `high_size`); the ops must be the same."""
        if not self.same_ops(high):
            raise ValueError("cannot interpolate op tables of different ops")
        t = (size - low_size) / (high_size - low_size)
        return OpTable(self.kind, np.maximum(self.flops + t * (high.flops - self.flops), 0.0),
                       np.maximum(self.nbytes + t * (high.nbytes - self.nbytes), 0.0), self.dtype, self.micro_step,
                       self.convolution, self.list_tensors, self.batch_norm)

    def repeated(self, accum_steps: int) -> "OpTable":
        """The table of `accum_steps` micro-steps: the last profiled micro-step's ops repeated
        for the micro-steps this table lacks (they run the same ops on same-shaped batches)."""
        have = self.micro_steps
        if accum_steps <= have or have == 0:
            return self
        last = np.flatnonzero(self.micro_step == have - 1)
        block = slice(int(last[0]), int(last[-1]) + 1)
        # The micro-step's ops are contiguous; what follows them is the optimizer step.
        pieces = [np.arange(0, block.stop)] + [np.arange(block.start, block.stop)] * (accum_steps - have) \
            + [np.arange(block.stop, len(self))]
        return self.take(np.concatenate(pieces))

    def take(self, index: np.ndarray) -> "OpTable":
        """The rows at `index` (positions, or a boolean mask such as `micro_step == OUTSIDE`
        for the optimizer step's ops), in that order."""
        return OpTable(*(getattr(self, f.name)[index] for f in fields(self)))

    def total_flops(self) -> int:
        """FLOPs of every op."""
        return int(self.flops.sum())

    @property
    def kernels(self) -> int:
        """How many ops launch a kernel (copies included)."""
        return int(np.count_nonzero(self.kind != VIEW))


class OpTally:
    """Collects an `OpTable` op by op; the estimate meter's tracker calls `record` for every op
    it sees and `phase` at each phase boundary of the step."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self._rows: list[tuple[int, float, float, int, int, bool, int]] = []
        self._micro_step = OUTSIDE

    def phase(self, name: str, micro_step: int | None) -> None:
        """Ops from here on belong to `micro_step` (None: outside the micro-steps)."""
        self._micro_step = OUTSIDE if micro_step is None else int(micro_step)

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any, flops: int) -> None:
        """Tally one dispatched op with its FLOPs (as counted by `op_flops`)."""
        from torch._subclasses.fake_tensor import FakeTensor

        packet = func.overloadpacket
        name = packet.__name__
        if func.namespace == "prim":
            return  # metadata queries (prim::device...) the tracker itself causes: no op of the step
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if getattr(func, "is_view", False) or name in HOST_ONLY:
            kind = VIEW
        elif name in ("clone", "_to_copy", "copy_") and any(not isinstance(t, FakeTensor) for t in inputs):
            # A real (host) tensor copied into the fake step: the micro-batch's upload.
            kind = COPY_IN
        else:
            kind = KERNEL
        nbytes = 0 if kind == VIEW else (tensor_bytes(inputs) + tensor_bytes(out)
                                         + tensor_bytes(written_in_place(func, args, kwargs, out)))
        if kind == COPY_IN:
            nbytes = tensor_bytes(inputs)
        if not flops and name == "_grouped_mm":
            # Records count FLOPs as FlopCounterMode does (none for grouped GEMMs, on the meters
            # too), but the device does the work: the time model counts it.
            flops = grouped_mm_flops(args[0], args[1], out)
        dtype = 0
        if flops:
            first = inputs[0].dtype if inputs else torch.float32
            dtype = _DTYPE_CODE.get(first, DTYPES.index("fp32"))
            if dtype == DTYPES.index("fp32") and self.cuda and name in CONVOLUTIONS:
                dtype = DTYPES.index("tf32")
        listed = sum(len(a) for a in args if isinstance(a, (list, tuple))) if name.startswith("_foreach") else 0
        self._rows.append((kind, float(flops), float(nbytes), dtype, self._micro_step, name in CONVOLUTIONS, listed,
                           is_training_batch_norm(func, args, kwargs)))

    def table(self) -> OpTable:
        """What was tallied, frozen."""
        cols = list(zip(*self._rows)) if self._rows else [()] * 8
        return OpTable(np.asarray(cols[0], dtype=np.int8), np.asarray(cols[1], dtype=np.float64),
                       np.asarray(cols[2], dtype=np.float64), np.asarray(cols[3], dtype=np.int8),
                       np.asarray(cols[4], dtype=np.int16), np.asarray(cols[5], dtype=bool),
                       np.asarray(cols[6], dtype=np.int32), np.asarray(cols[7], dtype=bool))


@dataclass(frozen=True)
class SpeedConstants:
    """A device kind's speed: data-sheet peaks and the few constants fitted to measured steps.

    `peak_flops` maps DTYPES names to dense FLOP/s; bandwidths are bytes/s; times are seconds.
    """

    peak_flops: dict[str, float]
    memory_bandwidth: float
    host_to_device_bandwidth: float
    host_op_seconds: float
    launch_seconds: float
    host_tensor_seconds: float
    step_host_seconds: float
    kernel_floor_seconds: float
    flop_efficiency: float
    bandwidth_efficiency: float
    conv_flop_efficiency: float
    batch_norm_bandwidth: float

    def __post_init__(self) -> None:
        for name in ("memory_bandwidth", "host_to_device_bandwidth", "flop_efficiency", "bandwidth_efficiency",
                     "conv_flop_efficiency", "batch_norm_bandwidth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("host_op_seconds", "launch_seconds", "host_tensor_seconds", "step_host_seconds",
                     "kernel_floor_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if any(not v > 0 for v in self.peak_flops.values()):
            raise ValueError("peak FLOP/s must be positive")


@dataclass(frozen=True)
class StepTime:
    """A predicted step: its time and what bound it."""

    seconds: float
    host_seconds: float
    device_seconds: float  # busy time of the device (kernels and copies), without waiting
    kernels: int
    ops: int

    @property
    def bound(self) -> str:
        """'host' when issuing the ops takes the host at least as long as the device is busy with
        them (the device waits), else 'device'."""
        return "host" if self.host_seconds >= self.device_seconds else "device"


def kernel_seconds(table: OpTable, speed: SpeedConstants) -> np.ndarray:
    """Each op's time on the device (0 for views): roofline, at least the kernel floor."""
    peaks = np.array([speed.peak_flops.get(name, speed.peak_flops["fp32"]) if name != "none" else np.inf
                      for name in DTYPES])
    efficiency = np.where(table.convolution, speed.conv_flop_efficiency, speed.flop_efficiency)
    compute = table.flops / (efficiency * peaks[table.dtype.astype(np.intp)])
    rate = np.where(table.batch_norm, speed.batch_norm_bandwidth, speed.bandwidth_efficiency * speed.memory_bandwidth)
    memory = table.nbytes / rate
    seconds = np.maximum(np.maximum(compute, memory), speed.kernel_floor_seconds)
    copies = table.kind == COPY_IN
    seconds[copies] = table.nbytes[copies] / speed.host_to_device_bandwidth
    seconds[table.kind == VIEW] = 0.0
    return seconds


def optimizer_step_start(table: OpTable) -> int:
    """Position of the optimizer step's first op: the first op after the last micro-step's ops
    (a `zero_grad` before the micro-steps is outside them too, but comes first); `len(table)`
    when nothing follows the micro-steps."""
    inside = np.flatnonzero(table.micro_step != OUTSIDE)
    return int(inside[-1]) + 1 if len(inside) else 0


def predict_step_time(table: OpTable, speed: SpeedConstants, accum_steps: int | None = None) -> StepTime:
    """The predicted time of one optimizer step (see the module docstring); with `accum_steps`
    above the micro-steps profiled, the last micro-step is repeated."""
    if accum_steps is not None:
        table = table.repeated(accum_steps)
    launched = table.kind != VIEW
    host_each = np.array(speed.host_op_seconds + speed.launch_seconds * launched
                         + speed.host_tensor_seconds * table.list_tensors, dtype=np.float64)
    # The step's own host work delays the optimizer step's first op; a table with nothing after
    # its micro-steps ends with it.
    start = optimizer_step_start(table)
    if start < len(table):
        host_each[start] += speed.step_host_seconds
    host_done = np.cumsum(host_each)  # when the host has issued each op
    device_each = kernel_seconds(table, speed)[launched]
    issued = host_done[launched]
    # end_i = max(end_{i-1}, issued_i) + d_i, unrolled: end_n = D + max(0, max_i(issued_i - D_{<i})).
    before = np.concatenate(([0.0], np.cumsum(device_each)[:-1])) if len(device_each) else np.zeros(0)
    busy = float(device_each.sum())
    wait = float(np.max(issued - before)) if len(issued) else 0.0
    device_end = busy + max(wait, 0.0)
    host = (float(host_done[-1]) if len(host_done) else 0.0) + (speed.step_host_seconds if start == len(table) else 0.0)
    return StepTime(max(device_end, host), host, busy, int(np.count_nonzero(launched)), len(table))


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 2 points."""
    from scipy.stats import spearmanr

    if len(xs) < 2:
        return math.nan
    return float(spearmanr(xs, ys).statistic)


@dataclass(frozen=True)
class PairOrder:
    """How many pairs of cases a prediction orders as their measurements do.

    `pairs`: every pair; `resolved`: the pairs whose measured throughput ratio's interval
    (`stats.throughput_ratio`) excludes 1; `agree`: the resolved pairs the prediction
    puts in the measured order. Spearman's rho counts every pair, also those whose measured order
    is a coin toss; this counts only what the measurements can tell apart.
    """

    pairs: int
    resolved: int
    agree: int

    @property
    def share(self) -> float:
        """Share of the resolved pairs in the measured order; NaN when none is resolved."""
        return self.agree / self.resolved if self.resolved else math.nan


def pair_order(measured: Sequence[StepTimes], batches: Sequence[float], predicted: Sequence[float],
               drift: float = 0.0) -> PairOrder:
    """Compare the order of predicted samples/s with the measured one, pair by pair.

    `measured[i]` are case i's step times, `batches[i]` the samples of one of its steps and
    `predicted[i]` its predicted samples/s. A pair counts as resolved when the bootstrap interval
    of its throughput ratio, widened by `drift` (the machine's drift between cases, as the
    report widens every ratio), excludes 1.
    """
    if not len(measured) == len(batches) == len(predicted):
        raise ValueError("measured, batches and predicted must have the same length")
    pairs = resolved = agree = 0
    for i in range(len(measured)):
        for j in range(i + 1, len(measured)):
            pairs += 1
            ratio = throughput_ratio(measured[i], measured[j], batches[i], batches[j], drift=drift)
            # The interval alone decides (not `Ratio.differs`, whose +-5% precision rule is for
            # claiming a speed-up): a 4x ratio known to [3, 5] orders its pair.
            if ratio is None or not ratio.known or ratio.low <= 1.0 <= ratio.high:
                continue
            resolved += 1
            agree += (ratio.value > 1) == (predicted[i] > predicted[j])
    return PairOrder(pairs, resolved, agree)


def ratio_error(measured: Sequence[float], predicted: Sequence[float], groups: Sequence[str],
                quantile: float = 0.95) -> float:
    """How far predicted throughput ratios are off, as a factor: exp of the `quantile` of
    |log(predicted_i / predicted_j) - log(measured_i / measured_j)| over every pair of cases in
    the same group (a workload: the plan compares configurations of one model), each group
    weighted equally so one workload with many cases does not decide it alone. 1.0 means every
    ratio was right; NaN without a pair."""
    errors: list[float] = []
    weights: list[float] = []
    for group in sorted(set(groups)):
        index = [i for i, g in enumerate(groups) if g == group]
        mine = [abs(math.log(predicted[i] / predicted[j]) - math.log(measured[i] / measured[j]))
                for k, i in enumerate(index) for j in index[k + 1:]]
        if not mine:
            continue
        errors += mine
        weights += [1.0 / len(mine)] * len(mine)
    if not errors:
        return math.nan
    return float(math.exp(np.quantile(np.asarray(errors), quantile, weights=np.asarray(weights),
                                      method="inverted_cdf")))


__all__ = ["COPY_IN", "DTYPES", "KERNEL", "OUTSIDE", "OpTable", "OpTally", "PairOrder", "SpeedConstants", "StepTime",
           "VIEW", "grouped_mm_flops", "is_training_batch_norm", "kernel_seconds", "op_flops", "optimizer_step_start",
           "pair_order", "predict_step_time", "ratio_error", "spearman", "tensor_bytes", "written_arguments",
           "written_in_place"]
