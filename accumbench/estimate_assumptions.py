"""What the estimate meter assumes about the device it predicts for, named and overridable.

Fake tensors see every tensor a training step allocates, and nothing else. On a CUDA device the
caching allocator also hands out memory that is no tensor of the step, and `max_memory_allocated`
counts it. The estimate adds it from these assumptions, one frozen record per device kind, and
every estimate record lists the ones it used (`Record.assumptions`):

- `allocator_round_bytes` (512 on CUDA): the caching allocator rounds every block up to a
  multiple of 512 bytes, so a 4-byte loss costs 512.
- `cublas_workspace_bytes` x `gemm_threads`: cuBLAS gets a workspace from the caching allocator
  for each (handle, stream) pair on its first GEMM and keeps it for the life of the process
  (aten/src/ATen/cuda/CublasHandlePool.cpp, `getChosenWorkspaceSize`: 32 MiB on sm90, i.e.
  H100/H200, else 4096 KiB x 2 + 16 KiB x 8 = 8 MiB + 128 KiB; `CUBLAS_WORKSPACE_CONFIG`
  changes it). Handles are per thread, and a training step runs GEMMs on two threads: the
  forward on the caller's thread, the backward on autograd's device thread; hence two.
- `cublaslt_workspace_bytes` x `gemm_threads`: cuBLASLt (used for GEMMs with a bias, and for
  bf16/fp16 GEMMs) keeps its own 1 MiB workspace per handle (`CUBLASLT_WORKSPACE_SIZE`, KiB).
- `attention_kernel`: which `scaled_dot_product_attention` kernel CUDA runs. `auto` picks as
  CUDA does for these shapes: flash for fp16/bf16 with head size <= 256 and a multiple of 8,
  memory-efficient otherwise (fp32), math when neither applies. Flash and memory-efficient
  keep the output and a (batch, heads, seq) fp32 log-sum-exp for the backward; math keeps the
  (seq x seq) attention matrix. Override with flash, efficient or math.
- `attention_scratch`: the flash backward allocates an fp32 accumulator for dQ (batch x
  seq rounded up to 128 x heads x head size) and the softmax row sums (batch x heads x seq);
  the memory-efficient backward the row sums only. They live for one attention backward call.
- `cudnn_workspace_bytes`: cuDNN takes a workspace from the caching allocator for each
  convolution (and batch norm) call and frees it after; which algorithm, hence how large, cuDNN's
  heuristics decide. Added to the peak of steps that run convolutions. 8 MiB on CUDA kinds: on
  the H100 (torch 2.11, cuDNN 9) the BatchNorm/GroupNorm ConvNets of the default suite peaked
  0-20 MiB above the estimate without it (results/estimate-vs-h100).
- `scratch_bytes`: a flat allowance for any other kernel scratch (sort buffers of the embedding
  backward...); 0 by default: not modelled.
- `cuda_autocast`: apply CUDA's autocast policy (which ops run in fp32 under bf16/fp16: layer
  and group norm, softmax, sums, losses...) rather than the CPU's; the estimate runs on fake
  CPU tensors, because autograd cannot run on fake CUDA tensors without a CUDA build.
- `moe_routing` (`balanced` or `worst`): which experts a mixture-of-experts router picks depends
  on trained weights, so where routing decides sizes (a loop over the experts hit, one matmul per
  expert) the estimate assumes it: `balanced` spreads tokens evenly over the experts, `worst`
  sends every token to the same k experts. Records of such steps give the peak under both
  (`assumptions.moe_routing_peaks`); see `accumbench.meters.known_values`.
- `total_memory_bytes` and `reserve_bytes`: the device's memory as torch reports it and what
  the allocator cannot use (CUDA context, handles, fragmentation); a predicted peak above their
  difference is reported as status `oom`.

Speed (what `accumbench.steptime` predicts step times from; None on the `cpu` kind, which
predicts no speed):

- `peak_flops_bf16`, `peak_flops_fp16`, `peak_flops_tf32`, `peak_flops_fp32`: dense FLOP/s
  from the data sheet (fp32 matmuls run without TF32 by default; fp32 convolutions with it).
- `memory_bandwidth`, `host_to_device_bandwidth`: bytes/s, data sheet (HBM; PCIe per direction).
- `host_op_seconds`: host time per dispatched aten op (Python, autograd, dispatcher);
  `launch_seconds`: host time per kernel launch on top; `host_tensor_seconds`: host time per
  tensor in a foreach op's lists (the optimizer step's per-parameter work); `step_host_seconds`:
  host time once per optimizer step that no aten op shows (the optimizer's and the training
  loop's own Python); `kernel_floor_seconds`: the least time a kernel takes on the device;
  `flop_efficiency`, `bandwidth_efficiency`: the fraction of the peak FLOP/s (cuBLAS GEMMs,
  attention) and bandwidth kernels reach; `conv_flop_efficiency`: the fraction of peak cuDNN's
  convolutions reach; `batch_norm_bandwidth`: bytes/s (as the model counts them) that batch
  norm's training kernels move, which reduce each channel and reach a small part of the device.
  The two FLOP efficiencies, the kernel floor and the batch-norm rate are measured by
  microbenchmarks (GPT-2's MLP GEMM, the ConvNet's first convolution, a tiny kernel, the
  ConvNet's batch-norm layers); the host costs and the bandwidth efficiency are fitted on the
  H100, `host_tensor_seconds` is not (`benchmarks/steptime_validation.py`,
  results/estimate-vs-h100/steptime_vs_measured.md).
- `speed_ratio_error`: how far the predicted throughput ratio of two configurations of one model
  may be off, as a factor (1.4 = up to 1.4x either way): what the held-out validation found in
  95% of pairs (`accumbench.steptime.ratio_error`). Not used to predict; `accumbench plan` puts
  it around a predicted slowdown and calls a smaller one no difference it can tell.

The `cpu` kind assumes nothing: exact sizes, no workspaces, the CPU's own kernels; it predicts
the cpu meter's number to the byte, which is how the estimate is validated without a GPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

SPEED_FIELDS = ("peak_flops_bf16", "peak_flops_fp16", "peak_flops_tf32", "peak_flops_fp32", "memory_bandwidth",
                "host_to_device_bandwidth", "host_op_seconds", "launch_seconds", "host_tensor_seconds",
                "step_host_seconds", "kernel_floor_seconds",
                "flop_efficiency", "bandwidth_efficiency", "conv_flop_efficiency", "batch_norm_bandwidth")
# The one size parser, re-exported: `--assume total_memory_bytes=80GiB` reads sizes like every command.
from accumbench.textfmt import format_bytes, is_fractional_bare_number, is_integer, parse_bool, parse_size

MIB = 1 << 20
GIB = 1 << 30
ATTENTION_KERNELS = ("auto", "flash", "efficient", "math")
MOE_ROUTINGS = ("balanced", "worst")
# Byte sizes and counts (each an int; total_memory_bytes may be None: unbounded).
BYTE_FIELDS = ("total_memory_bytes", "reserve_bytes", "allocator_round_bytes", "cublas_workspace_bytes",
               "cublaslt_workspace_bytes", "cudnn_workspace_bytes", "scratch_bytes")
COUNT_FIELDS = ("gemm_threads",)
# Speed constants that may be 0 (a host cost that is not there, e.g. host_tensor_seconds as
# fitted); every other speed constant is a rate or a fraction of one, so 0 would divide by 0.
ZERO_OK_SPEED_FIELDS = ("host_op_seconds", "launch_seconds", "host_tensor_seconds", "step_host_seconds",
                        "kernel_floor_seconds")


@dataclass(frozen=True)
class DeviceAssumptions:
    """What an estimate assumes about one kind of device (see the module docstring)."""

    kind: str
    label: str
    total_memory_bytes: int | None
    reserve_bytes: int
    allocator_round_bytes: int
    cublas_workspace_bytes: int
    cublaslt_workspace_bytes: int
    gemm_threads: int
    attention_kernel: str
    attention_scratch: bool
    cudnn_workspace_bytes: int
    scratch_bytes: int
    cuda_autocast: bool
    # speed (accumbench.steptime); None: no step time is predicted
    peak_flops_bf16: float | None = None
    peak_flops_fp16: float | None = None
    peak_flops_tf32: float | None = None
    peak_flops_fp32: float | None = None
    memory_bandwidth: float | None = None
    host_to_device_bandwidth: float | None = None
    host_op_seconds: float | None = None
    launch_seconds: float | None = None
    host_tensor_seconds: float | None = None
    step_host_seconds: float | None = None
    kernel_floor_seconds: float | None = None
    flop_efficiency: float | None = None
    bandwidth_efficiency: float | None = None
    conv_flop_efficiency: float | None = None
    batch_norm_bandwidth: float | None = None
    speed_ratio_error: float | None = None
    moe_routing: str = "balanced"

    def __post_init__(self) -> None:
        """Check every field's type and range; ValueError names the field (an --assume key)."""
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention_kernel must be one of {', '.join(ATTENTION_KERNELS)}, "
                             f"got {self.attention_kernel!r}")
        if self.moe_routing not in MOE_ROUTINGS:
            raise ValueError(f"moe_routing must be one of {', '.join(MOE_ROUTINGS)}, got {self.moe_routing!r}")
        for name in BYTE_FIELDS + COUNT_FIELDS:
            value = getattr(self, name)
            if name == "total_memory_bytes" and value is None:
                continue
            if not is_integer(value):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value!r}")
        if self.allocator_round_bytes < 1:
            raise ValueError("allocator_round_bytes must be at least 1 (1 = exact sizes)")
        for name in ("attention_scratch", "cuda_autocast"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.total_memory_bytes is not None and self.usable_memory_bytes <= 0:
            # Every case would be predicted out of memory, and summaries would print a negative
            # "usable" size: a typo in one of the two.
            raise ValueError(f"total_memory_bytes ({format_bytes(self.total_memory_bytes)}) must be larger than "
                             f"reserve_bytes ({format_bytes(self.reserve_bytes)}): nothing would be usable")
        for name in SPEED_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and name not in ZERO_OK_SPEED_FIELDS):
                raise ValueError(f"{name} must be {'non-negative' if name in ZERO_OK_SPEED_FIELDS else 'positive'}, "
                                 f"got {value!r}")
            if name.endswith("_efficiency") and value > 1:  # a fraction of the data sheet's peak
                raise ValueError(f"{name} is a fraction of the peak, at most 1, got {value!r}")
        error = self.speed_ratio_error
        if error is not None and (isinstance(error, bool) or not isinstance(error, (int, float))
                                  or not math.isfinite(error) or error < 1):
            raise ValueError(f"speed_ratio_error must be a finite factor of at least 1, got {error!r}")
        self.speed()  # validates the speed constants together when they are all given

    def speed(self):
        """The `accumbench.steptime.SpeedConstants` of this kind, or None when any is unknown."""
        from accumbench.steptime import SpeedConstants

        values = [getattr(self, name) for name in SPEED_FIELDS]
        if any(v is None for v in values):
            return None
        v = dict(zip(SPEED_FIELDS, values))
        return SpeedConstants(
            peak_flops={"bf16": v["peak_flops_bf16"], "fp16": v["peak_flops_fp16"],
                        "tf32": v["peak_flops_tf32"], "fp32": v["peak_flops_fp32"]},
            memory_bandwidth=v["memory_bandwidth"], host_to_device_bandwidth=v["host_to_device_bandwidth"],
            host_op_seconds=v["host_op_seconds"], launch_seconds=v["launch_seconds"],
            host_tensor_seconds=v["host_tensor_seconds"], step_host_seconds=v["step_host_seconds"],
            kernel_floor_seconds=v["kernel_floor_seconds"], flop_efficiency=v["flop_efficiency"],
            bandwidth_efficiency=v["bandwidth_efficiency"], conv_flop_efficiency=v["conv_flop_efficiency"],
            batch_norm_bandwidth=v["batch_norm_bandwidth"])

    @property
    def usable_memory_bytes(self) -> int | None:
        """Memory the allocator can hand out: total minus the reserve (None when unbounded)."""
        return None if self.total_memory_bytes is None else self.total_memory_bytes - self.reserve_bytes

    def with_overrides(self, overrides: Mapping[str, Any]) -> "DeviceAssumptions":
        """A copy with some fields replaced; values may be text ('32MiB', 'false', 'math')."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in fields or key in ("kind", "label"):
                known = ", ".join(sorted(set(fields) - {"kind", "label"}))
                raise ValueError(f"unknown assumption {key!r}; known: {known}")
            changes[key] = _typed(key, value, fields[key].type)
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The assumptions as a plain dict (what a record stores)."""
        return dataclasses.asdict(self)


def _typed(key: str, value: Any, annotation: str) -> Any:
    """An --assume value's text as the field's type; ValueError naming `key` when it is not one
    (range checks are `DeviceAssumptions.__post_init__`'s)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if "float" in annotation:
        if text.lower() == "none":
            if key in SPEED_FIELDS:  # one unknown constant switches the whole step-time model off
                raise ValueError(f"{key} takes a number (e.g. 989e12, 5e-6), got {value!r}: without it no step "
                                 "time can be predicted; a kind without speed constants (cpu) predicts none")
            return None
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{key} takes a number (e.g. 989e12, 5e-6), got {value!r}") from None
        if not math.isfinite(number):  # float() reads 'nan' and 'inf'; a record would store null
            raise ValueError(f"{key} takes a finite number (e.g. 989e12, 5e-6), got {value!r}")
        return number
    if "bool" in annotation:
        flag = parse_bool(text)
        if flag is None:
            raise ValueError(f"{key} takes true or false, got {value!r}")
        return flag
    if "int" in annotation:
        if "None" in annotation and text.lower() == "none":
            return None
        if key in COUNT_FIELDS:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{key} takes a whole number (e.g. 2), got {value!r}") from None
        try:
            size = parse_size(text)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
        if is_fractional_bare_number(text):  # bytes come whole
            raise ValueError(f"{key} takes a whole number of bytes or a size with a unit (e.g. 32MiB), got {value!r}")
        return size
    return text


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse repeated KEY=VALUE texts into a dict; ValueError names a malformed one. The values
    are typed and checked, naming their key, by `assumptions_for` (`DeviceAssumptions`)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--assume takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _cuda_kind(kind: str, label: str, total_gib: float, cublas_workspace: int,
               speed: dict[str, float]) -> DeviceAssumptions:
    return DeviceAssumptions(
        kind=kind,
        label=label,
        total_memory_bytes=int(total_gib * GIB),
        reserve_bytes=1 * GIB,
        allocator_round_bytes=512,
        cublas_workspace_bytes=cublas_workspace,
        cublaslt_workspace_bytes=1 * MIB,
        gemm_threads=2,
        attention_kernel="auto",
        attention_scratch=True,
        cudnn_workspace_bytes=8 * MIB,
        scratch_bytes=0,
        cuda_autocast=True,
        **speed,
    )


# The cuBLAS workspace default outside sm90: 4096 KiB x 2 + 16 KiB x 8.
_PRE_HOPPER_CUBLAS_WORKSPACE = 4096 * 1024 * 2 + 16 * 1024 * 8

# Step-time constants for the H100. flop_efficiency, conv_flop_efficiency and kernel_floor_seconds
# are measured by microbenchmarks (GPT-2's bf16 MLP GEMM, the ConvNet's first convolution, a tiny
# kernel back to back: results/NVIDIA-H200/steptime/speed_constants.json, on the H100's sibling
# H200; efficiencies are fractions of each device's own peak): without GPT-2 no training workload
# pins the GEMM efficiency down, so fitting it made the held-out error depend on where the fit
# started, and a fitted kernel floor goes to its lower bound. The host costs and the bandwidth
# efficiency are fitted on all 78 measured cases of results/NVIDIA-H100-80GB-HBM3/default.jsonl
# (torch 2.11) by benchmarks/steptime_validation.py, rounded to 3 digits; the held-out errors are
# in results/estimate-vs-h100/steptime_vs_measured.md.
# host_tensor_seconds is not fitted (0): fitted, it goes to its lower bound. Host costs
# belong to the host and the software stack more than to the GPU: H200 and A100 reuse them.
H100_FITTED = {"host_op_seconds": 2.2e-6, "launch_seconds": 31.8e-6, "host_tensor_seconds": 0.0,
               "step_host_seconds": 1.91e-3, "bandwidth_efficiency": 0.683,
               "flop_efficiency": 0.668, "conv_flop_efficiency": 0.181, "kernel_floor_seconds": 1.75e-6}
# Batch norm in training, forward and backward, at the large ConvNet's four stages on an H200
# (results/NVIDIA-H200/steptime/norm_kernels.csv, with its ReLU; batch 256): 9.28 ms for the
# eight layers, of which the model gives the ReLUs 0.59 ms, so the batch-norm ops moved the
# 2.52 GB the model counts for them at 290 GB/s: 6% of the H200's bandwidth, where GroupNorm's
# layers came within 1.7x of the model. The kernels are bound by their per-channel reductions,
# not by memory bandwidth, so the rate is taken as it is for the H100 (same SMs) and, unmeasured,
# for the A100.
BATCH_NORM_BANDWIDTH = 290e9
# How far a predicted throughput ratio of two configurations of one model was off in 95% of the
# pairs of the H100 run, each workload held out of the fit and weighted equally
# (benchmarks/steptime_validation.py, `accumbench.steptime.ratio_error`). The other kinds reuse
# the H100's constants and so its error; no run has measured theirs.
H100_SPEED_RATIO_ERROR = 1.66
# Data sheets (dense, no sparsity): H100 SXM5 and H200 SXM 989.4 TFLOP/s bf16/fp16, 494.7 TF32,
# 66.9 fp32; HBM3 3.35 TB/s (H100), HBM3e 4.8 TB/s (H200); PCIe Gen5 x16 64 GB/s per direction.
# A100 SXM4 80GB: 312 bf16/fp16, 156 TF32, 19.5 fp32; HBM2e 2.039 TB/s; PCIe Gen4 x16 32 GB/s.
# A100 is data sheet only: not checked on a measured run. H200 was checked, not refitted: with
# these peaks and the H100's constants, six configurations outside the calibration had a median
# |error| of 13.1% (worst 29.3%), 14 GPT-2 cases 7.5% (worst 33%), against one run each
# (results/estimate-vs-h100/README.md): too few runs to fit the constants on.
_HOPPER = {"peak_flops_bf16": 989.4e12, "peak_flops_fp16": 989.4e12, "peak_flops_tf32": 494.7e12,
           "peak_flops_fp32": 66.9e12, "host_to_device_bandwidth": 64e9}
_H100_CALIBRATION = {**H100_FITTED, "batch_norm_bandwidth": BATCH_NORM_BANDWIDTH,
                     "speed_ratio_error": H100_SPEED_RATIO_ERROR}
H100_SPEED = {**_HOPPER, "memory_bandwidth": 3.35e12, **_H100_CALIBRATION}
H200_SPEED = {**_HOPPER, "memory_bandwidth": 4.8e12, **_H100_CALIBRATION}
A100_SPEED = {"peak_flops_bf16": 312e12, "peak_flops_fp16": 312e12, "peak_flops_tf32": 156e12,
              "peak_flops_fp32": 19.5e12, "memory_bandwidth": 2.039e12, "host_to_device_bandwidth": 32e9,
              **_H100_CALIBRATION}

# A literal registry: device kind -> assumptions. Totals are what torch reports for the 80 GB
# H100/A100 and the 141 GB H200 (a little under the marketing size).
DEVICE_ASSUMPTIONS: dict[str, DeviceAssumptions] = {
    "h100": _cuda_kind("h100", "H100", 79.11, 32 * MIB, H100_SPEED),
    "h200": _cuda_kind("h200", "H200", 139.8, 32 * MIB, H200_SPEED),
    "a100": _cuda_kind("a100", "A100", 79.15, _PRE_HOPPER_CUBLAS_WORKSPACE, A100_SPEED),
    "cpu": DeviceAssumptions(
        kind="cpu", label="cpu", total_memory_bytes=None, reserve_bytes=0, allocator_round_bytes=1,
        cublas_workspace_bytes=0, cublaslt_workspace_bytes=0, gemm_threads=0,
        attention_kernel="auto", attention_scratch=False, cudnn_workspace_bytes=0, scratch_bytes=0,
        cuda_autocast=False,
    ),
}


def assumptions_for(kind: str, overrides: Mapping[str, Any] | None = None) -> DeviceAssumptions:
    """The named device kind's assumptions with `overrides` applied; ValueError for bad input."""
    if kind not in DEVICE_ASSUMPTIONS:
        raise ValueError(f"unknown device kind {kind!r}; choose one of {', '.join(DEVICE_ASSUMPTIONS)}")
    base = DEVICE_ASSUMPTIONS[kind]
    return base.with_overrides(overrides) if overrides else base


def kind_for_device_name(name: str) -> str | None:
    """The GPU device kind whose label is in a CUDA device name (`NVIDIA H200` -> `h200`), or None."""
    # Longest label first, so that a label contained in a longer one never shadows it.
    labels = sorted(((a.label, kind) for kind, a in DEVICE_ASSUMPTIONS.items() if kind != "cpu"),
                    key=lambda pair: -len(pair[0]))
    return next((kind for label, kind in labels if label.upper() in name.upper()), None)


__all__ = ["ATTENTION_KERNELS", "DEVICE_ASSUMPTIONS", "SPEED_FIELDS", "DeviceAssumptions", "assumptions_for",
           "kind_for_device_name", "parse_overrides", "parse_size"]
