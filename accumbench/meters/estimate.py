"""The estimate meter: predicts a step's CUDA peak on fake tensors, with no GPU.

How: the case's model is built under a `FakeTensorMode` (tensors with shapes, dtypes and storage
sizes but no data, so GPT-2's 124M parameters cost nothing), the very same scenario step runs on
them, and `LiveBytesTracker` (the cpu meter's probe) counts live storage bytes, here with a log of
every allocation and free. One warm-up step (creates the optimizer state), then the step whose
peak is reported. The log is replayed with the device's allocator rounding, and what fake tensors
cannot see is added from named assumptions (`accumbench.estimate_assumptions`): cuBLAS/cuBLASLt
workspaces, the attention kernel CUDA would pick and its backward scratch, a flat allowance.

Why fake CPU tensors for a CUDA prediction: autograd needs the device's stream machinery, which a
CPU-only torch lacks, so fake CUDA tensors cannot run a backward there. The CUDA-specific parts
that change memory are emulated instead: CUDA's autocast policy (`accumbench.meters.cuda_autocast`:
which ops run in fp32 under bf16/fp16), the 512-byte allocator rounding, the attention kernel.

The log is kept so that `accumbench.estimate` can replay it at other micro-batch sizes (storage
sizes are constant or proportional to the micro-batch) instead of running every case.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.overrides import TorchFunctionMode

from accumbench.estimate_assumptions import DeviceAssumptions
from accumbench.meters.base import (LAZY_MODULES, Measurement, Meter, Step, check_counts, live_tensors,
                                    trace_with_tracker)
from accumbench.meters.cuda_autocast import cuda_autocast_policy, eligible
from accumbench.meters.known_values import MOE_ROUTINGS, KnownValues, known_tensors_look_real
from accumbench.meters.tracker import LiveBytesTracker, local_tensor
from accumbench.meters.cpu import MEMORY_STEPS
from accumbench.meters.timing import StepPolicy, as_policy
from accumbench.records import BREAKDOWN_CATEGORIES
from accumbench.scenarios import TrainingState
from accumbench.textfmt import format_bytes
from accumbench.steptime import OpTable, OpTally, op_flops, predict_step_time

# --- the allocation log ------------------------------------------------------------------------

NEW, FREE, MOVE, RESIZE = "new", "free", "move", "resize"
# Ops that run on cuBLAS (one workspace per thread that runs any of them) ...
GEMM_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "addr", "dot", "vdot",
                      "_addmm_activation"})
# ... and those that run on cuBLASLt (addmm with a 1-D bias: `gemm_and_bias`).
LT_OPS = frozenset({"addmm", "_addmm_activation"})
# Ops that run on cuDNN with a per-call workspace on CUDA.
CUDNN_OPS = frozenset({"convolution", "convolution_backward", "_convolution", "cudnn_convolution",
                       "cudnn_convolution_transpose"})
SDPA_FORWARD_CPU = "_scaled_dot_product_flash_attention_for_cpu"
SDPA_BACKWARD_CPU = "_scaled_dot_product_flash_attention_for_cpu_backward"


@dataclass(frozen=True)
class StepProfile:
    """The raw-byte allocation log of one tracked optimizer step, and what the assumptions need
    to know about it.

    `events` are `(NEW, entry, nbytes, category)`, `(FREE, entry)`, `(MOVE, entry, category)` and
    `(RESIZE, entry, nbytes)`; entries number storages in order of first sight. Events before
    `step_start` adopt what was alive before the step (parameters, optimizer state...).
    `flops` counts the step's matmul/convolution/attention FLOPs as `FlopCounterMode` would.
    """

    events: tuple[tuple, ...]
    step_start: int
    gemm_threads: frozenset[str]
    lt_threads: frozenset[str]
    attention_calls: tuple[tuple[str, str], ...]  # (kernel assumed for CUDA, kernel the step ran)
    flops: int
    convolutions: bool = False
    ops: OpTable | None = None  # every op of the step, for the step-time model (accumbench.steptime)

    def sizes(self) -> list[int]:
        """Every byte count in the log, in order (what differs between micro-batch sizes)."""
        return [e[2] for e in self.events if e[0] in (NEW, RESIZE)]

    def shape(self) -> tuple:
        """The log without byte counts: equal for two runs that did the same thing."""
        events = tuple(e if e[0] in (FREE, MOVE) else (e[0], e[1], *e[3:]) for e in self.events)
        return (events, self.step_start, self.gemm_threads, self.lt_threads, self.attention_calls,
                self.convolutions)

    def with_sizes(self, sizes: Sequence[int], flops: int | None = None, ops: OpTable | None = None
                   ) -> "StepProfile":
        """The same log with other byte counts (a replay at another micro-batch size), and the
        op table at that size (None: unknown)."""
        it = iter(sizes)
        events = tuple(e if e[0] in (FREE, MOVE) else (e[0], e[1], int(next(it)), *e[3:])
                       for e in self.events)
        return replace(self, events=events, flops=self.flops if flops is None else flops, ops=ops)

    def replay(self, assumptions: DeviceAssumptions) -> "Replay":
        """Live bytes before the step, the step's peak and its breakdown, with the device's
        allocator rounding and the workspaces fake tensors cannot see."""
        round_to = assumptions.allocator_round_bytes
        size_of = (lambda n: n) if round_to == 1 else (lambda n: 0 if n == 0 else -(-n // round_to) * round_to)
        baseline, peak, breakdown = _replay(self.events, size_of, self.step_start)
        persistent = self.workspace_bytes(assumptions)
        # Allowances for per-call scratch: held at the peak, not between steps.
        transient = assumptions.scratch_bytes + (assumptions.cudnn_workspace_bytes if self.convolutions else 0)
        breakdown["other"] += persistent + transient
        return Replay(baseline + persistent, peak + persistent + transient, breakdown)

    def workspace_bytes(self, assumptions: DeviceAssumptions) -> int:
        """cuBLAS and cuBLASLt workspaces the step's GEMM threads keep allocated."""
        cublas = min(len(self.gemm_threads), assumptions.gemm_threads)
        lt = min(len(self.lt_threads), assumptions.gemm_threads)
        return cublas * assumptions.cublas_workspace_bytes + lt * assumptions.cublaslt_workspace_bytes

    def applied(self, assumptions: DeviceAssumptions) -> dict[str, Any]:
        """The record's `assumptions`: the device kind's values and which of them applied here."""
        applied: list[str] = []
        if assumptions.allocator_round_bytes > 1:
            applied.append(f"allocator-rounding-{assumptions.allocator_round_bytes}")
        cublas = min(len(self.gemm_threads), assumptions.gemm_threads)
        lt = min(len(self.lt_threads), assumptions.gemm_threads)
        if cublas and assumptions.cublas_workspace_bytes:
            applied.append(f"cublas-workspace x{cublas}")
        if lt and assumptions.cublaslt_workspace_bytes:
            applied.append(f"cublaslt-workspace x{lt}")
        if self.attention_calls:
            kinds = sorted({assumed for assumed, _ in self.attention_calls})
            applied += [f"{kind}-attention" for kind in kinds]
            if assumptions.attention_scratch and any(k != "math" for k in kinds):
                applied.append("attention-backward-scratch")
            ran_math = sum(1 for assumed, ran in self.attention_calls if assumed != "math" and ran == "math")
            if ran_math:
                applied.append(f"attention-ran-math-on-cpu x{ran_math} (over-estimate)")
        if assumptions.cuda_autocast:
            applied.append("cuda-autocast-policy")
        if self.convolutions and assumptions.cudnn_workspace_bytes:
            applied.append("cudnn-workspace-allowance")
        if assumptions.scratch_bytes:
            applied.append("scratch-allowance")
        values = {k: v for k, v in assumptions.describe().items() if k != "kind"}
        return {"device_kind": assumptions.kind, **values, "applied": applied}


@dataclass(frozen=True)
class Replay:
    """Bytes of one replayed step: live before it, its peak, the peak's breakdown."""

    baseline: int
    peak: int
    breakdown: dict[str, int]


def _forget_training(state: TrainingState) -> None:
    """Back to a case just built: no gradients, no optimizer state (a fake parameter's values
    do not matter, so the parameters need no reset)."""
    for parameter in state.model.parameters():
        parameter.grad = None
    state.optimizer.state.clear()


def estimate_measurement(steady: StepProfile, assumptions: DeviceAssumptions,
                         first: StepProfile | None = None, note: str | None = None,
                         accum_steps: int | None = None,
                         routing_peaks: dict[str, int] | None = None) -> Measurement:
    """The measurement an estimate reports: the steady step's replay, the warm-up step's peak
    when it was profiled at this size, and the predicted step time (of `accum_steps`
    micro-steps) when the device kind has speed constants. `routing_peaks`: the peak under each
    `moe_routing` assumption, when assumed routing decided sizes (`assumptions.moe_routing_peaks`)."""
    replay = steady.replay(assumptions)
    applied = steady.applied(assumptions)
    speed = assumptions.speed()
    predicted = None
    if speed is not None and steady.ops is not None:
        step_time = predict_step_time(steady.ops, speed, accum_steps)
        if math.isfinite(step_time.seconds):  # assumed constants can overflow it (host_op_seconds=1e308)
            predicted = step_time.seconds
            applied["applied"] = [*applied["applied"], f"step-time-model ({step_time.bound}-bound, "
                                                        f"{step_time.kernels} kernels)"]
        else:
            applied["applied"] = [*applied["applied"], "step-time-model: no finite step time from these constants"]
    if note:
        applied["applied"] = [*applied["applied"], note]
    if routing_peaks:
        applied["applied"] = [*applied["applied"], f"moe-routing-{assumptions.moe_routing}"]
        applied["moe_routing_peaks"] = dict(routing_peaks)
    return Measurement(
        peak_allocated=replay.peak,
        first_step_peak_allocated=first.replay(assumptions).peak if first is not None else None,
        baseline_allocated=replay.baseline,
        step_times_s=(),
        breakdown=replay.breakdown,
        assumptions=applied,
        flops_per_step=steady.flops,
        predicted_step_time_s=predicted,
    )


def _replay(events: Sequence[tuple], size_of: Callable[[int], int], step_start: int
            ) -> tuple[int, int, dict[str, int]]:
    """Walk the log once: live bytes when the step starts, the step's peak, its breakdown."""
    live: dict[int, list] = {}
    by_category = dict.fromkeys(BREAKDOWN_CATEGORIES, 0)
    current = baseline = 0
    peak = -1
    breakdown = dict(by_category)
    for index, event in enumerate(events):
        if index == step_start:
            baseline = peak = current
            breakdown = dict(by_category)
        kind = event[0]
        if kind == NEW:
            size = size_of(event[2])
            live[event[1]] = [size, event[3]]
            current += size
            by_category[event[3]] += size
        elif kind == FREE:
            size, category = live.pop(event[1])
            current -= size
            by_category[category] -= size
        elif kind == MOVE:
            entry = live[event[1]]
            by_category[entry[1]] -= entry[0]
            by_category[event[2]] += entry[0]
            entry[1] = event[2]
        else:  # RESIZE
            entry = live[event[1]]
            size = size_of(event[2])
            current += size - entry[0]
            by_category[entry[1]] += size - entry[0]
            entry[0] = size
        if index >= step_start and current > peak:
            peak = current
            breakdown = dict(by_category)
    if step_start >= len(events):
        baseline = peak = current
        breakdown = dict(by_category)
    return baseline, peak, breakdown


class LoggingTracker(LiveBytesTracker):
    """`LiveBytesTracker` with exact sizes that also logs every allocation, free and
    re-categorisation (for replays with rounding and at other batch sizes), notes which phase
    ran GEMMs (one cuBLAS workspace per thread), counts FLOPs and injects modelled scratch."""

    def __init__(self, device_type: str, scratch: Callable[[Any, tuple, dict], int] | None = None,
                 cuda: bool = False) -> None:
        super().__init__(device_type)
        self.ops = OpTally(cuda)
        self.log: list[tuple] = []
        self.step_start = 0
        self.gemm_threads: set[str] = set()
        self.lt_threads: set[str] = set()
        self.cpu_flash_calls = 0
        self.attention_calls: list[tuple[str, str]] = []
        self.flops = 0
        self.convolutions = False
        self._thread = "forward"
        self._entries = 0
        self._scratch = scratch
        self.graded: set[int] = set()  # id() of the parameters that received a gradient

    def _on_grad(self, param: torch.Tensor) -> None:
        """As the parent's, noting that this parameter got a gradient in the step."""
        self.graded.add(id(param))
        super()._on_grad(param)

    def start_step(self) -> None:
        """Mark where the step starts (after adopting what was alive before it)."""
        self.step_start = len(self.log)

    def profile(self) -> StepProfile:
        """What was logged, frozen."""
        return StepProfile(
            events=tuple(self.log), step_start=self.step_start,
            gemm_threads=frozenset(self.gemm_threads), lt_threads=frozenset(self.lt_threads),
            attention_calls=tuple(self.attention_calls), flops=int(self.flops),
            convolutions=self.convolutions, ops=self.ops.table(),
        )

    # -- accounting, as the parent's, plus the log --------------------------------------
    def _new_entry(self, size: int, category: str) -> list:
        """As the parent's, numbered and logged (sizes are exact: rounding happens in replay)."""
        entry = [size, category, self._entries]
        self._entries += 1
        self.log.append((NEW, entry[2], size, category))
        return entry

    def _resize(self, entry: list, size: int) -> None:
        self.log.append((RESIZE, entry[2], size))
        super()._resize(entry, size)

    def classify(self, tensor: torch.Tensor, category: str) -> None:
        """As the parent's, logging a change of category."""
        tensor = local_tensor(tensor)
        if tensor.device.type != self.device_type:
            return
        entry = self._live.get(tensor.untyped_storage())
        if entry is not None and entry[1] != category:
            self.log.append((MOVE, entry[2], category))
        super().classify(tensor, category)

    def _release(self, entry: list) -> None:
        self.log.append((FREE, entry[2]))
        super()._release(entry)

    def transient(self, nbytes: int) -> None:
        """Scratch a kernel allocates and frees within one call: counted for the peak only."""
        if nbytes <= 0:
            return
        index = self._entries
        self._entries += 1
        self.log += [(NEW, index, nbytes, "other"), (FREE, index)]
        self._change(nbytes, "other")
        self._change(-nbytes, "other")

    # -- phases: the backward runs on autograd's device thread on CUDA --------------------
    def phase(self, name: str, micro_step: int | None) -> None:
        """As the parent's; also notes which CUDA thread would run what follows."""
        super().phase(name, micro_step)
        self.ops.phase(name, micro_step)
        self._thread = "backward" if name == "backward" else "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = super().__torch_dispatch__(func, types, args, kwargs)
        packet = func.overloadpacket
        name = packet.__name__
        if name in GEMM_OPS:
            self.gemm_threads.add(self._thread)
            if name in LT_OPS and len(args) > 0 and isinstance(args[0], torch.Tensor) and args[0].dim() == 1:
                self.lt_threads.add(self._thread)
        elif name == SDPA_FORWARD_CPU:
            self.cpu_flash_calls += 1
        elif name in CUDNN_OPS:
            self.convolutions = True
        flops = op_flops(func, args, kwargs, out, self.ops.cuda)
        self.flops += flops
        self.ops.record(func, args, kwargs, out, flops)
        if self._scratch is not None:
            self.transient(self._scratch(func, args, kwargs))
        return out


@contextlib.contextmanager
def fake_modules_convert_in_place() -> Iterator[None]:
    """`module.to(dtype)`, `.half()`, `.double()` on a model of fake tensors convert as on real
    tensors: each parameter keeps its identity (weight ties and optimizer references hold) and
    takes the converted data (`param.data = ...`), and a conversion to what a tensor already is
    does nothing. torch swaps each fake parameter with its conversion instead (`Module._apply`
    always swaps a FakeTensor), which fails on the fake mode's own references to the parameter
    ("_apply(): Couldn't swap Linear.weight"): a model built with `.to(torch.bfloat16)`, or
    Switch Transformers' router, which casts itself to the router dtype in every forward."""
    from torch._subclasses.fake_tensor import FakeTensor

    original = torch.nn.Module._apply

    def _apply(module, fn, recurse=True):
        tensors = [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]
        if not any(isinstance(t, FakeTensor) for t in tensors):
            return original(module, fn, recurse)
        with torch.no_grad():
            if all(fn(tensor) is tensor for tensor in tensors):
                return module
        if recurse:
            for child in module.children():
                child._apply(fn)  # this function again (it is the class's while patched)
        for param in module._parameters.values():
            if param is None:
                continue
            with torch.no_grad():
                applied = fn(param)
                if applied is not param:
                    param.data = applied
                if param.grad is not None and (grad := fn(param.grad)) is not param.grad:
                    param.grad.data = grad
        for key, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[key] = fn(buffer)
        return module

    torch.nn.Module._apply = _apply
    try:
        yield
    finally:
        torch.nn.Module._apply = original


def _storage_bytes(alive: dict[str, list[torch.Tensor]]) -> int:
    """Bytes of the distinct storages among these tensors."""
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes()
                for tensors in alive.values() for t in tensors}
    return sum(storages.values())


def _one_fake_mode():
    """A `FakeTensorMode` (allowing real inputs, which become constants) that a deep copy leaves
    as it is. A fake tensor keeps its mode in its `__dict__`, and `copy.deepcopy` of a fake
    parameter (`nn.TransformerEncoder` clones its layer, an EMA copy) copies that dict: the copy
    then belonged to a copy of the mode, which each later op treated as a foreign tensor and
    gave a storage of its own (20 KiB too many on a one-layer encoder)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    class OneFakeTensorMode(FakeTensorMode):
        def __deepcopy__(self, memo):
            return self

    return OneFakeTensorMode(allow_non_fake_inputs=True)


# --- attention ---------------------------------------------------------------------------------

def cuda_attention_kernel(assumed: str, dtype: torch.dtype, head_dim: int, has_mask: bool) -> str:
    """The SDPA kernel CUDA runs (`assumed` unless "auto"): flash for fp16/bf16 with a head size
    <= 256 and a multiple of 8 and no explicit mask; memory-efficient for fp32/fp16/bf16 with an
    aligned head size; else math."""
    if assumed != "auto":
        return assumed
    half = dtype in (torch.float16, torch.bfloat16)
    if half and head_dim <= 256 and head_dim % 8 == 0 and not has_mask:
        return "flash"
    if (half and head_dim % 8 == 0) or (dtype == torch.float32 and head_dim % 4 == 0):
        return "efficient"
    return "math"


def attention_backward_scratch(kernel: str, query: torch.Tensor) -> int:
    """Bytes the CUDA attention backward allocates inside one call, beyond its outputs.

    Flash (FlashAttention-2's `mha_bwd`): an fp32 dQ accumulator (batch, seq rounded up to 128,
    heads, head size rounded up to 32) and fp32 softmax row sums (batch, heads, rounded seq).
    Memory-efficient: the fp32 row sums, plus an fp32 dQ accumulator for fp16/bf16 inputs.
    """
    batch, heads, seq, head_dim = query.shape[0], query.shape[1], query.shape[-2], query.shape[-1]
    if kernel == "flash":
        seq_r = -(-seq // 128) * 128
        dim_r = -(-head_dim // 32) * 32 if head_dim <= 192 else 256
        return 4 * (batch * seq_r * heads * dim_r + batch * heads * seq_r)
    if kernel == "efficient":
        accumulator = batch * heads * seq * head_dim if query.dtype != torch.float32 else 0
        return 4 * (batch * heads * seq + accumulator)
    return 0


class _AttentionChoice(TorchFunctionMode):
    """Runs each `scaled_dot_product_attention` the way the assumed CUDA kernel keeps memory:
    math when CUDA would run math (forced on the CPU too), the CPU's flash kernel otherwise
    (it keeps the same output and log-sum-exp as CUDA's flash and efficient kernels)."""

    def __init__(self, assumed: str, tracker: LoggingTracker) -> None:
        super().__init__()
        self.assumed = assumed
        self.tracker = tracker

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query = args[0]
        dtype = query.dtype
        if torch.is_autocast_enabled("cpu") and eligible(query):
            dtype = torch.get_autocast_dtype("cpu")
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        kernel = cuda_attention_kernel(self.assumed, dtype, query.shape[-1], mask is not None)
        before = self.tracker.cpu_flash_calls
        if kernel == "math":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.MATH]):
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        ran = "flash" if self.tracker.cpu_flash_calls > before else "math"
        self.tracker.attention_calls.append((kernel, ran))
        return out


# --- fp16 without host syncs -------------------------------------------------------------------

class _NoSyncGradScaler(torch.amp.GradScaler):
    """A GradScaler that steps without reading `found_inf` on the host (fake tensors hold no
    values): it scales, unscales and updates with the same tensors as the real one, and steps
    the optimizer, as the real one does whenever the gradients are finite."""

    def _maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
        return optimizer.step(*args, **kwargs)


# --- the meter ---------------------------------------------------------------------------------

class EstimateMeter(Meter):
    """Predicts the CUDA (or cpu) peak of a case on fake tensors; times nothing.

    Use with the runner on the CPU device: `Runner(torch.device("cpu"), meter=EstimateMeter(a))`.
    Runs one warm-up step and one measured step whatever the case's counts (fake steps repeat
    exactly), each under its own logging tracker; `last_profiles` keeps both logs.
    """

    name = "estimate"
    counts_flops = True

    def __init__(self, assumptions: DeviceAssumptions) -> None:
        self.assumptions = assumptions
        self.last_profiles: tuple[StepProfile, StepProfile] | None = None
        self._mode = None
        self._values: KnownValues | None = None
        self.grown_bytes = 0  # what the last profiled step left alive between steps beyond what it found
        self.graded: frozenset[int] = frozenset()  # the parameters the last profiled step gave gradients

    @contextlib.contextmanager
    def case_context(self) -> Iterator[None]:
        """A fresh fake-tensor mode per case: nothing is shared between cases."""
        self._mode = _one_fake_mode()
        self._values = KnownValues(self.assumptions.moe_routing)
        try:
            yield
        finally:
            self._mode = self._values = None

    @property
    def routing_read(self) -> bool:
        """True when assumed MoE routing decided a size in this case (its peak then depends on
        the `moe_routing` assumption)."""
        return self._values is not None and self._values.assumption_read

    @property
    def batch_decided(self) -> str | None:
        """The first op (or `.item()` read) of this case where the batch's values decided a
        size (`KnownValues.batch_decided`), or None: then every micro-step and every size must
        be profiled (accumbench.estimate)."""
        return self._values.batch_decided if self._values is not None else None

    @property
    def state_decided(self) -> str | None:
        """The first op (or host read) of this case where random draws or the model's buffers
        decided a size or a value read on the host (`KnownValues.state_decided`), or None. A run
        then steps differently with each draw and each step taken before, so a case cannot
        borrow another's profile: `accumbench.estimate` estimates each such case on its own,
        seeded and stepped as a run is."""
        return self._values.state_decided if self._values is not None else None

    def _fake(self) -> contextlib.ExitStack:
        """The fake-tensor mode and, over it, the values that resolve data-dependent ops."""
        stack = contextlib.ExitStack()
        stack.enter_context(self._mode)
        stack.enter_context(self._values)
        stack.enter_context(known_tensors_look_real(self._values))
        stack.enter_context(fake_modules_convert_in_place())
        return stack

    def build_model(self, workload: Any, device: torch.device) -> torch.nn.Module:
        """The workload's model built under the fake mode: shapes, dtypes, weight tying and
        buffers exactly as the workload makes them, no data and no memory."""
        if self._mode is None:
            raise RuntimeError("EstimateMeter.build_model needs case_context()")
        if device.type != "cpu":
            raise ValueError("the estimate meter runs on fake CPU tensors: use torch.device('cpu')")
        # No .to(device): fake tensors are made on the CPU already, and Module.to would try to
        # swap each fake parameter with itself.
        with self._fake(), self._values.building():
            try:
                model = workload.build_model()
            except RuntimeError as exc:
                if "UninitializedParameter" in str(exc):  # a lazy module run once to size it
                    raise ValueError(LAZY_MODULES) from exc
                raise
        # Weights are random: the step must not depend on values the cpu meter does not share.
        self._values.forget(model.parameters())
        self._values.mark_state(model.buffers())
        return model

    def measure(self, step: Step, state: TrainingState, batches: Sequence[Any], warmup: int,
                steps: int | StepPolicy) -> Measurement:
        """One warm-up and one steady fake step. Where the model's state or random draws decide
        the step (`state_decided`), the case's warm-up steps and then the steps the predicted
        meter takes its peak over, the largest peak kept: on the cpu kind the cpu meter's one
        tracked step (`cpu.MEMORY_STEPS`), on a GPU kind every step the cuda meter times (a
        fixed count, or `StepPolicy.min_steps`, the least an adaptive run times)."""
        check_counts(warmup, steps)
        first = self.profile(step, state)
        steady = self.profile(step, state)
        ran, stepped = (1, 1), None
        if self.state_decided:
            policy = as_policy(steps)
            measured = (MEMORY_STEPS if self.assumptions.kind == "cpu"
                        else policy.steps if policy.steps is not None else policy.min_steps)
            later = [steady] + [self.profile(step, state) for _ in range(warmup + measured - 2)]
            steady = max(later[warmup - 1:], key=lambda profile: profile.replay(self.assumptions).peak)
            ran = (warmup, measured)
            stepped = (f"stepped as a run: {warmup} warm-up and {measured} measured step(s), the largest peak kept "
                       f"({self.state_decided} decides the step; a run that measures more steps may peak higher)")
        note = "; ".join(filter(None, (stepped, self.growth_note()))) or None  # of the last step profiled
        self.last_profiles = (first, steady)
        measurement = estimate_measurement(steady, self.assumptions, first, note,
                                           routing_peaks=self.routing_peaks(step, state, steady))
        return replace(measurement, warmup_steps=ran[0], measured_steps=ran[1])

    def routing_peaks(self, step: Step, state: TrainingState, steady: StepProfile) -> dict[str, int] | None:
        """When assumed MoE routing decided sizes: the steady peak under each `moe_routing`
        assumption, each that of a run whose router always routes so; else None.

        Each other routing starts afresh (no gradients, no optimizer state) with its own warm-up
        step: on the state the assumed routing left, its steady step would hold optimizer state
        for the experts the assumed routing trained and none for the others. Then the assumed
        routing's warm-up runs again, so a timeline traced next starts from its state."""
        if not self.routing_read:
            return None
        chosen = self.assumptions.moe_routing
        peaks = {chosen: steady.replay(self.assumptions).peak}
        try:
            for other in MOE_ROUTINGS:
                if other != chosen:
                    self._values.moe_routing = other
                    _forget_training(state)
                    self.profile(step, state)
                    peaks[other] = self.profile(step, state).replay(self.assumptions).peak
        finally:
            self._values.moe_routing = chosen
        _forget_training(state)
        self.profile(step, state)
        return {routing: peaks[routing] for routing in MOE_ROUTINGS}

    def profile(self, step: Step, state: TrainingState) -> StepProfile:
        """Run one step on fake tensors under a fresh logging tracker; return its profile.
        The first call on a state is the warm-up step (it creates the optimizer state)."""
        if self._mode is None:
            raise RuntimeError("EstimateMeter.profile needs case_context()")
        assumptions = self.assumptions
        cuda = assumptions.cuda_autocast

        def scratch(func, args, kwargs) -> int:
            if func.overloadpacket.__name__ != SDPA_BACKWARD_CPU or not assumptions.attention_scratch:
                return 0
            query = args[1]
            kernel = cuda_attention_kernel(assumptions.attention_kernel, query.dtype, query.shape[-1],
                                           kwargs.get("attn_mask") is not None)
            return attention_backward_scratch(kernel, query)

        tracker = LoggingTracker(state.device.type, scratch if cuda else None, cuda=cuda)
        alive = self._alive_between_steps(state)
        before = _storage_bytes(alive)
        tracker.adopt(alive)
        del alive  # held through the step, a cache the forward replaces would outlive its free
        tracker.start_step()
        if state.scaler is not None and not isinstance(state.scaler, _NoSyncGradScaler):
            state.scaler = _NoSyncGradScaler(state.device.type)
        previous_observer = state.observer
        state.observer = tracker
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(self._fake())
                if cuda:
                    stack.enter_context(cuda_autocast_policy())
                    stack.enter_context(_AttentionChoice(assumptions.attention_kernel, tracker))
                stack.enter_context(tracker)
                tracker.watch_gradients(state.model.parameters())
                step()
        finally:
            state.observer = previous_observer
        self.grown_bytes = _storage_bytes(self._alive_between_steps(state)) - before
        self.graded = frozenset(tracker.graded)
        return tracker.profile()

    def growth_note(self) -> str | None:
        """What to say when the last profiled step left more alive between steps than it found
        (after the warm-up step, which makes the optimizer state): a list or cache the model
        grows, whose later, larger self the estimate's two steps do not see; else None."""
        if self.grown_bytes <= 0:
            return None
        return (f"the steady step left {format_bytes(self.grown_bytes)} more alive between steps than it found "
                "(a cache or bank the model grows?): a run's later steps may peak higher than estimated")

    def trace(self, step: Step, state: TrainingState):
        """The live-bytes curve of one more fake step, counted as the estimate counts (the
        device kind's allocator rounding, CUDA's autocast rules and attention kernel). The
        workspaces the assumptions add (cuBLAS, cuDNN, attention scratch) are constants of the
        prediction, not allocations of the step: the record's peak includes them, the curve
        does not (with `--device-kind cpu` there are none and the two agree to the byte)."""
        if self._mode is None:
            raise RuntimeError("EstimateMeter.trace needs case_context()")
        round_to = self.assumptions.allocator_round_bytes

        def size_of(nbytes: int) -> int:
            return 0 if nbytes == 0 else -(-nbytes // round_to) * round_to

        with contextlib.ExitStack() as stack:
            stack.enter_context(self._fake())
            if self.assumptions.cuda_autocast:
                stack.enter_context(cuda_autocast_policy())
                stack.enter_context(_AttentionChoice(self.assumptions.attention_kernel,
                                                     LoggingTracker(state.device.type)))
            return trace_with_tracker(step, state, state.device.type, size_of,
                                      alive=self._alive_between_steps(state))

    def _alive_between_steps(self, state: TrainingState) -> dict[str, list[torch.Tensor]]:
        """What the device holds between steps. For a CUDA prediction, AdamW-style 0-dim `step`
        counters are left out: without `capturable`/`fused` torch keeps them on the host."""
        alive = live_tensors(state)
        if self.assumptions.cuda_autocast:
            host = {id(t) for per_param in state.optimizer.state.values()
                    for key, t in per_param.items() if key == "step" and isinstance(t, torch.Tensor)
                    and t.dim() == 0}
            alive["optimizer"] = [t for t in alive["optimizer"] if id(t) not in host]
        return alive

    def device_info(self, device: torch.device) -> dict[str, Any]:
        a = self.assumptions
        return {"device_name": f"estimate: {a.label} ({describe_kind(a)})",
                "device_total_memory": a.total_memory_bytes}


def describe_kind(assumptions: DeviceAssumptions) -> str:
    """A short, stable description of the assumptions for `device_name`."""
    a = assumptions
    if not a.cuda_autocast:
        return "exact sizes, no workspaces"
    parts = [f"{a.allocator_round_bytes}-byte rounding",
             f"cuBLAS {a.cublas_workspace_bytes >> 20} MiB + cuBLASLt {a.cublaslt_workspace_bytes >> 20} MiB"
             f" x{a.gemm_threads} threads",
             f"attention {a.attention_kernel}"]
    if a.cudnn_workspace_bytes:
        parts.append(f"cuDNN {a.cudnn_workspace_bytes >> 20} MiB")
    if a.scratch_bytes:
        parts.append(f"scratch {a.scratch_bytes >> 20} MiB")
    return ", ".join(parts)


__all__ = ["EstimateMeter", "LoggingTracker", "Replay", "StepProfile", "attention_backward_scratch",
           "cuda_attention_kernel", "describe_kind", "estimate_measurement", "fake_modules_convert_in_place"]
