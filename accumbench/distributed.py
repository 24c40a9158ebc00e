"""Gradient accumulation under DistributedDataParallel, on `torch.distributed` (NCCL or gloo).

Each rank of a `torchrun` job runs the same case on its shard of the global batch; the model is
wrapped in `DistributedDataParallel`, and a communication hook counts and times the gradient
all-reduces. Per case, every rank measures with its own meter, the per-rank results are gathered
to every rank, and only rank 0 hands the merged `Record` to the sink (writes it).

What a distributed record means (one per case, `world_size` = N ranks):

- `micro_batch` is per rank; each rank's micro-batch is its slice of a global micro-batch of
  `micro_batch * world_size` samples, made from the same seed as a single-process run, so the
  global batch does not depend on N. `effective_batch` is global: samples per optimizer step
  over all ranks (`micro_batch * accum_steps * world_size`).
- `peak_allocated` (and the other memory fields) is the max over ranks; `step_times_s` holds,
  per measured step, the slowest rank's time; `samples_per_s` and `tokens_per_s` are summed over
  ranks; `flops_per_step` is summed over ranks and `mfu` divides by N devices' peak.
- `distributed` = {"backend", "no_sync", "bucket_cap_mb", "buckets", "allreduces_per_step",
  "allreduces_per_bucket_per_step", "allreduce_time_s_per_step", "allreduce_timing",
  "per_rank_peak_allocated", "per_rank_samples_per_s", "per_rank_allreduce_time_s_per_step",
  "per_rank_effective_batch", "timeout_s"}.
- "Gradient all-reduces" are DDP bucket all-reduces (DDP packs gradients into buckets and
  all-reduces a bucket when all its gradients are ready): `allreduces_per_step` counts hook calls
  per optimizer step over the timed steps, `buckets` the distinct buckets. With `no_sync()` on
  the non-final micro-steps that is `buckets` per step; without it `accum_steps * buckets`.
- `allreduce_time_s_per_step`: per rank, the time from each bucket's hook call (its gradients
  are ready) to its all-reduce finishing, summed over the step's buckets (wall clock around the
  future on the CPU; CUDA events on the compute stream on CUDA), then the max over ranks. Bucket
  all-reduces overlap the backward and each other, so this is the time spent in communication,
  not the time it adds to the step.
- The variants of a case differ only in `TrainingState.skip_sync_until_last`; the scenario stays
  `large-batch` or `accumulated`, and the case id ends with `/ddp-sync` or `/ddp-nosync` (after
  `/wsN` when N > 1), so distributed records never collide with single-process ones.

Failures: every rank catches its own exception; the gathered statuses make every rank agree the
case failed (`oom` when any rank ran out of memory, else `error`, naming the rank), and the run
goes on. Each case gets a fresh process group with a timeout, so a rank that raised while the
others wait in an all-reduce ends their wait after `timeout_s` instead of a hang, and a broken
group is not reused. On NCCL the watchdog may end the whole job instead (torchrun then stops
every rank); the records already written stay, and `--resume` continues.
"""

from __future__ import annotations

import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist

from accumbench.cases import Case, case_id
from accumbench.environment import peak_flops, provenance, utc_timestamp
from accumbench.meters.base import Measurement, Meter, WallClockTimer
from accumbench.records import Record
from accumbench.runner import (
    DEFAULT_SEED,
    PreparedCase,
    RunProgress,
    count_flops,
    default_optimizer_label,
    identity_fields,
    is_out_of_memory,
    optimizer_label,
    pin_host_batch,
    run_cases,
)
from accumbench.scenarios import StepOptions, check_compatible, new_training_state
from accumbench.workloads import Workload, load_workload

# A literal registry: device type -> the torch.distributed backend it runs on.
BACKENDS: dict[str, str] = {"cuda": "nccl", "cpu": "gloo"}
DDP_SCENARIOS = ("large-batch", "accumulated")
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "ACCUMBENCH_DIST_TIMEOUT"
EXIT_FILE_ENV = "ACCUMBENCH_DDP_EXIT_FILE"
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A distributed run that cannot start; the message is one line for the user."""


# --- the process ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: rank, world size, its device and backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes records and prints progress."""
        return self.rank == 0


def timeout_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """The collective timeout in seconds: `$ACCUMBENCH_DIST_TIMEOUT`, else 300."""
    text = environ.get(TIMEOUT_ENV)
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


def context_from_env(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S,
                     environ: Mapping[str, str] = os.environ) -> DistContext:
    """Read rank, world size and local rank from the variables torchrun sets; pick the backend
    for the device (NCCL on CUDA, one GPU per local rank; gloo on the CPU)."""
    missing = [name for name in TORCHRUN_ENV if name not in environ]
    if missing:
        raise DistributedError(
            f"--distributed runs under torchrun ({', '.join(missing)} not set); launch with "
            "'torchrun --nproc-per-node N -m accumbench run --distributed ...' or use "
            "'accumbench run --nproc-per-node N ...'"
        )
    try:
        rank, world_size, local_rank = (int(environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise DistributedError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if device.type not in BACKENDS:
        raise DistributedError(f"no distributed backend for device {device.type!r}; use cuda or cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedError(f"local rank {local_rank} has no GPU: {count} visible; "
                                   "use at most one process per GPU")
        device = torch.device("cuda", local_rank)
    return DistContext(rank, world_size, local_rank, device, BACKENDS[device.type], timeout_s)


@dataclass
class ProcessGroups:
    """The job's groups: `control` (gloo, for statuses and results; a long timeout, so a rank
    still waiting for a failed collective can always report), and the per-case DDP groups."""

    context: DistContext
    control: Any

    def new_case_group(self) -> Any:
        """A fresh group for one case's DDP (all ranks call this in the same order)."""
        return dist.new_group(backend=self.context.backend,
                              timeout=datetime.timedelta(seconds=self.context.timeout_s))

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        out: list[Any] = [None] * self.context.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's `obj` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]


def init_distributed(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> ProcessGroups:
    """Join the torchrun job: set this rank's GPU, start the default group with a timeout, and
    make the gloo control group. Raises `DistributedError` outside torchrun."""
    context = context_from_env(device, timeout_s)
    if context.device.type == "cuda":
        torch.cuda.set_device(context.device)
    control_timeout = datetime.timedelta(seconds=2 * timeout_s + 60)
    if not dist.is_initialized():
        dist.init_process_group(backend=context.backend, timeout=control_timeout)
    control = dist.new_group(backend="gloo", timeout=control_timeout)
    return ProcessGroups(context, control)


def shutdown() -> None:
    """Leave the job (every group), if we joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- cases -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DdpCase:
    """A case run under DDP; `no_sync` puts the non-final micro-steps under `model.no_sync()`."""

    case: Case
    no_sync: bool = False

    @property
    def scenario(self) -> str:
        """The wrapped case's scenario (large-batch or accumulated)."""
        return self.case.scenario

    @property
    def workload(self) -> str:
        """The wrapped case's workload spec."""
        return self.case.workload

    def label(self) -> str:
        """A short human description for progress lines."""
        return f"{self.case.label()} ddp{'-nosync' if self.no_sync else ''}"


def ddp_cases(cases: Iterable[Case]) -> tuple[list[DdpCase], list[Case]]:
    """The DDP variants of the cases, and the cases DDP does not run (multi-task).

    `accumulated` runs twice, with and without `no_sync()` (the knob this measures);
    `large-batch` once (one backward: one all-reduce of each bucket either way).
    """
    kept: list[DdpCase] = []
    skipped: list[Case] = []
    for case in cases:
        if case.scenario == "accumulated":
            kept += [DdpCase(case, no_sync=True), DdpCase(case, no_sync=False)]
        elif case.scenario == "large-batch":
            kept.append(DdpCase(case, no_sync=False))
        else:
            skipped.append(case)
    return kept, skipped


def ddp_case_id(workload_name: str, dcase: DdpCase, optimizer: str, world_size: int) -> str:
    """`case_id` of the wrapped case (with `/wsN` when N > 1) plus `/ddp-nosync` or `/ddp-sync`."""
    base = case_id(workload_name, dcase.case, optimizer, world_size=world_size)
    return f"{base}/ddp-{'nosync' if dcase.no_sync else 'sync'}"


# --- data ------------------------------------------------------------------------------------

def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """This rank's slice (along dim 0) of every tensor in a global batch, copied so the rank
    holds only its shard. Raises ValueError for a tensor whose first dimension does not split."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            return batch.clone()
        rows = batch.shape[0]
        if rows % world_size:
            raise ValueError(f"cannot shard a batch tensor of {rows} rows over {world_size} ranks")
        n = rows // world_size
        return batch[rank * n:(rank + 1) * n].clone()
    if isinstance(batch, dict):
        return {k: shard_batch(v, rank, world_size) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard_batch(v, rank, world_size) for v in batch)
    return batch


def ddp_loss_weights(workload: Workload, global_batches: Sequence[Any], shards: Sequence[Any],
                     loss_norm: str, world_size: int) -> list[float]:
    """Each local micro-batch's loss factor, such that DDP's average over ranks of the summed
    gradients is the gradient of the global batch's loss.

    "mean": 1/N (DDP's average over equal shards makes the global mean). "token":
    `world_size * count(shard_i) / count(all global micro-batches)`: every valid token of the
    effective batch weighs the same, whatever rank holds it.
    """
    n = len(shards)
    if loss_norm == "mean":
        return [1.0 / n] * n
    if workload.count_loss_elements is None:
        raise ValueError(f"loss_norm='token' needs a workload that counts loss elements; {workload.name} does not")
    total = sum(workload.count_loss_elements(b) for b in global_batches)
    return [world_size * workload.count_loss_elements(s) / total for s in shards]


# --- the communication hook ------------------------------------------------------------------

@dataclass(frozen=True)
class CommStats:
    """All-reduces of the timed steps: hook calls and seconds per optimizer step, bucket count."""

    allreduces_per_step: float
    buckets: int
    time_s_per_step: float
    timing: str


class AllReduceCounter:
    """State of a DDP communication hook that counts and times each bucket's all-reduce.

    Register with `model.register_comm_hook(counter, AllReduceCounter.hook)`; the hook does what
    DDP's default does (`allreduce_hook`: divide by the world size, all-reduce the sum).
    `reset()` starts a window; `stats(steps)` reads it (after a CUDA synchronize).
    """

    def __init__(self, group: Any, device_type: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self.group = group
        self.cuda = device_type == "cuda"
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget what was counted so far."""
        self.calls = 0
        self.bucket_ids: set[int] = set()
        self.wall_s = 0.0
        self._events: list[tuple[Any, Any]] = []

    @staticmethod
    def hook(state, bucket):  # no annotations: DDP rejects any but its own (dist.GradBucket)
        """The DDP comm hook: count, start the clock, all-reduce, stop the clock when done."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        state.calls += 1
        state.bucket_ids.add(bucket.index())
        if state.cuda:
            # Recorded on the compute stream when the bucket is ready; the callback runs with
            # streams that wait for the all-reduce, so `end` marks its completion on the GPU.
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            state._events.append((start, end))

            def done(fut: torch.futures.Future) -> torch.Tensor:
                end.record()
                return fut.value()
        else:
            started = state.clock()

            def done(fut: torch.futures.Future) -> torch.Tensor:
                state.wall_s += state.clock() - started
                return fut.value()

        return allreduce_hook(state.group, bucket).then(done)

    def seconds(self) -> float:
        """Seconds spent in all-reduces since `reset()` (synchronises on CUDA)."""
        if not self.cuda:
            return self.wall_s
        torch.cuda.synchronize()
        return sum(start.elapsed_time(end) for start, end in self._events) / 1000.0

    def stats(self, steps: int) -> CommStats:
        """Per-optimizer-step figures of the window since `reset()`."""
        return CommStats(
            allreduces_per_step=self.calls / steps,
            buckets=len(self.bucket_ids),
            time_s_per_step=self.seconds() / steps,
            timing="cuda-events" if self.cuda else "wall-clock",
        )


class CommWindowTimer:
    """Wraps a meter's step timer so the all-reduce counts cover exactly the timed steps (not
    the warm-up, nor the slower memory-tracked steps of the cpu meter)."""

    def __init__(self, inner: Any, counter: AllReduceCounter) -> None:
        self.inner = inner
        self.counter = counter
        self.stats: CommStats | None = None

    def time_steps(self, step: Callable[[], None], steps: int) -> tuple[float, ...]:
        """Time `steps` steps with the inner timer; keep their all-reduce stats in `.stats`."""
        self.counter.reset()
        times = self.inner.time_steps(step, steps)
        self.stats = self.counter.stats(steps)
        return times


def ddp_meter(device_type: str, counter: AllReduceCounter) -> tuple[Meter, CommWindowTimer]:
    """The device's meter (cuda or cpu), its step timer wrapped to count all-reduces."""
    if device_type == "cuda":
        from accumbench.meters.cuda import CudaEventTimer, CudaMeter

        window = CommWindowTimer(CudaEventTimer(), counter)
        return CudaMeter(timer=window), window
    from accumbench.meters.cpu import CpuMeter

    window = CommWindowTimer(WallClockTimer(), counter)
    return CpuMeter(timer=window), window


# --- one case on one rank ------------------------------------------------------------------

def wrap_ddp(model: torch.nn.Module, context: DistContext, group: Any,
             bucket_cap_mb: float | None = None) -> torch.nn.parallel.DistributedDataParallel:
    """`DistributedDataParallel` over `group`, one device per process."""
    from torch.nn.parallel import DistributedDataParallel

    kwargs: dict[str, Any] = {"process_group": group}
    if context.device.type == "cuda":
        kwargs["device_ids"] = [context.device.index]
    if bucket_cap_mb is not None:
        # Set explicitly, it caps the first bucket too (DDP's default first bucket is 1 MiB).
        kwargs["bucket_cap_mb"] = bucket_cap_mb
    return DistributedDataParallel(model, **kwargs)


def prepare_ddp_case(dcase: DdpCase, workload: Workload, context: DistContext, group: Any,
                     counter: AllReduceCounter, seed: int = DEFAULT_SEED,
                     bucket_cap_mb: float | None = None) -> PreparedCase:
    """Build the case as `runner.prepare_case` does, with the model in DDP over `group` (its
    all-reduces counted by `counter`'s hook) and this rank's shard of each global micro-batch.
    Every rank builds the same initial model from the seed (DDP also broadcasts rank 0's)."""
    case = dcase.case
    check_compatible(case.scenario, workload)
    options = StepOptions(amp=case.amp, set_to_none=case.set_to_none, loss_norm=case.loss_norm)
    torch.manual_seed(seed)
    model = wrap_ddp(workload.build_model().to(context.device), context, group, bucket_cap_mb)
    model.register_comm_hook(counter, AllReduceCounter.hook)
    state = new_training_state(workload, model, context.device, options)
    state.skip_sync_until_last = dcase.no_sync
    generator = torch.Generator().manual_seed(seed)
    global_batches = [workload.make_batch(case.micro_batch * context.world_size, generator)
                      for _ in range(case.accum_steps)]
    shards = [shard_batch(b, context.rank, context.world_size) for b in global_batches]
    weights = ddp_loss_weights(workload, global_batches, shards, case.loss_norm, context.world_size)
    del global_batches
    if context.device.type == "cuda":
        shards = [pin_host_batch(b) for b in shards]
    return PreparedCase(case.scenario, workload, state, shards, weights)


@dataclass(frozen=True)
class RankResult:
    """What one rank measured (or how it failed); gathered to every rank, so picklable."""

    rank: int
    status: str = "ok"
    error: str | None = None
    collective: bool = False  # the failure looks like waiting on another rank (timeout, peer gone)
    optimizer: str = ""
    parameters: int | None = None
    flops: int | None = None
    peak_allocated: int | None = None
    first_step_peak_allocated: int | None = None
    baseline_allocated: int | None = None
    peak_reserved: int | None = None
    breakdown: dict[str, int] | None = None
    step_times_s: tuple[float, ...] = ()
    comm: CommStats | None = None


_COLLECTIVE_TEXT = re.compile(r"timed out|timeout|connection (closed|reset)|gloo|nccl|peer", re.I)


def failed_result(rank: int, exc: BaseException) -> RankResult:
    """A rank's failure as data: oom or error, the first line of the message, and whether it
    looks like a consequence of another rank's failure (a collective that timed out)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    collective = isinstance(exc, getattr(dist, "DistError", ())) or bool(_COLLECTIVE_TEXT.search(str(exc)))
    return RankResult(
        rank=rank,
        status="oom" if is_out_of_memory(exc) else "error",
        error=f"{type(exc).__name__}: {text}".strip()[:400],
        collective=collective and not is_out_of_memory(exc),
    )


def merge_results(results: Sequence[RankResult], effective_batch_per_rank: int, tokens_per_sample: int | None,
                  device_name: str, amp: str) -> dict[str, Any]:
    """Record fields from every rank's result: outcome, memory (max over ranks), speed (summed
    over ranks), and the `distributed` block's per-rank lists. Pure: testable without processes."""
    failed = [r for r in results if r.status != "ok"]
    if failed:
        root = [r for r in failed if not r.collective] or failed
        primary = next((r for r in root if r.status == "oom"), root[0])
        error = f"rank {primary.rank}: {primary.error}"
        for waited, what in ((False, "failed too"), (True, "gave up waiting for it")):
            ranks = [str(r.rank) for r in failed if r is not primary and r.collective is waited]
            if ranks:
                error += f" (rank {', '.join(ranks)} {what})"
        status = "oom" if any(r.status == "oom" for r in failed) else "error"
        return {"status": status, "error": error[:500]}
    worst = max(results, key=lambda r: r.peak_allocated or 0)
    medians = [statistics.median(r.step_times_s) for r in results]
    per_rank_speed = [effective_batch_per_rank / m if m > 0 else None for m in medians]
    samples_per_s = sum(per_rank_speed) if all(per_rank_speed) else None
    step_times = tuple(max(times) for times in zip(*(r.step_times_s for r in results)))
    median = statistics.median(step_times)
    flops = sum(r.flops for r in results) if all(r.flops is not None for r in results) else None
    peak = peak_flops(device_name, amp)
    reserved = [r.peak_reserved for r in results if r.peak_reserved is not None]
    comm = [r.comm for r in results]
    return {
        "status": "ok",
        "peak_allocated": worst.peak_allocated,
        "first_step_peak_allocated": max(r.first_step_peak_allocated for r in results),
        "baseline_allocated": max(r.baseline_allocated for r in results),
        "peak_reserved": max(reserved) if reserved else None,
        "breakdown": worst.breakdown,
        "parameters": results[0].parameters,
        "step_times_s": step_times,
        "samples_per_s": samples_per_s,
        "tokens_per_s": samples_per_s * tokens_per_sample if samples_per_s and tokens_per_sample else None,
        "flops_per_step": flops,
        "mfu": flops / median / (peak * len(results)) if (flops and peak and median > 0) else None,
        "distributed_stats": {
            "buckets": max(c.buckets for c in comm),
            "allreduces_per_step": max(c.allreduces_per_step for c in comm),
            "allreduces_per_bucket_per_step": max(c.allreduces_per_step / c.buckets if c.buckets else 0.0
                                                  for c in comm),
            "allreduce_time_s_per_step": max(c.time_s_per_step for c in comm),
            "allreduce_timing": comm[0].timing,
            "per_rank_peak_allocated": [r.peak_allocated for r in results],
            "per_rank_samples_per_s": per_rank_speed,
            "per_rank_allreduce_time_s_per_step": [c.time_s_per_step for c in comm],
        },
    }


# --- the runner ------------------------------------------------------------------------------

class DistributedRunner:
    """Measures `DdpCase`s on every rank of the job; only rank 0 calls the sink and progress.

    `measure` and `run` are collective: every rank calls them with the same cases in the same
    order. `bucket_cap_mb` is DDP's bucket size (None: DDP's default, 25 MiB with a 1 MiB first
    bucket).
    """

    def __init__(self, groups: ProcessGroups, seed: int = DEFAULT_SEED, run_id: str | None = None,
                 bucket_cap_mb: float | None = None) -> None:
        self.groups = groups
        self.context = groups.context
        self.seed = seed
        self.bucket_cap_mb = bucket_cap_mb
        # One run id for the job: rank 0's.
        self.run_id = groups.broadcast((run_id or uuid.uuid4().hex[:12]) if self.context.is_writer else None)
        self._workloads: dict[tuple, Workload] = {}
        meter, _ = ddp_meter(self.context.device.type, AllReduceCounter(None, self.context.device.type))
        self.meter_name = meter.name
        self._provenance = {**provenance(), **meter.device_info(self.context.device), "meter": meter.name}

    @property
    def is_writer(self) -> bool:
        """True on rank 0."""
        return self.context.is_writer

    def workload(self, dcase: DdpCase | Case) -> Workload:
        """Load (once) the workload a case names."""
        case = dcase.case if isinstance(dcase, DdpCase) else dcase
        key = (case.workload, case.options)
        if key not in self._workloads:
            self._workloads[key] = load_workload(case.workload, case.options_dict)
        return self._workloads[key]

    def case_id(self, dcase: DdpCase) -> str:
        """The id the case's record will carry."""
        workload = self.workload(dcase)
        return ddp_case_id(workload.name, dcase, default_optimizer_label(workload), self.context.world_size)

    def measure(self, dcase: DdpCase) -> Record:
        """Measure one case on every rank and merge; every rank returns the same record.
        A failing case (on any rank) becomes an `oom`/`error` record, never an exception."""
        workload = self.workload(dcase)
        group = self.groups.new_case_group()
        counter = AllReduceCounter(group, self.context.device.type)
        meter, window = ddp_meter(self.context.device.type, counter)
        try:
            local = self._measure_local(dcase, workload, group, counter, meter, window)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failing case is data; the other ranks must hear of it
            local = failed_result(self.context.rank, exc)
            exc.__traceback__ = None  # its frames hold the case's tensors
        finally:
            meter.release(self.context.device)
        results = self.groups.all_gather(local)
        try:
            dist.destroy_process_group(group)
        except Exception:  # a group broken by a failed rank: dropping it is all we need
            pass
        return self._record(dcase, workload, results)

    def _measure_local(self, dcase: DdpCase, workload: Workload, group: Any, counter: AllReduceCounter,
                       meter: Meter, window: CommWindowTimer) -> RankResult:
        case = dcase.case
        prepared = prepare_ddp_case(dcase, workload, self.context, group, counter, self.seed,
                                    self.bucket_cap_mb)
        measurement: Measurement = meter.measure(prepared.step, prepared.state, prepared.batches, case.warmup,
                                                 case.steps)
        flops = count_flops(prepared.step)  # after measuring, on every rank (the step all-reduces)
        module = prepared.state.model.module
        return RankResult(
            rank=self.context.rank,
            optimizer=optimizer_label(prepared.state.optimizer),
            parameters=sum(p.numel() for p in module.parameters()),
            flops=flops,
            peak_allocated=measurement.peak_allocated,
            first_step_peak_allocated=measurement.first_step_peak_allocated,
            baseline_allocated=measurement.baseline_allocated,
            peak_reserved=measurement.peak_reserved,
            breakdown=measurement.breakdown,
            step_times_s=tuple(measurement.step_times_s),
            comm=window.stats,
        )

    def _record(self, dcase: DdpCase, workload: Workload, results: Sequence[RankResult]) -> Record:
        case = dcase.case
        ws = self.context.world_size
        optimizer = next((r.optimizer for r in results if r.optimizer), default_optimizer_label(workload))
        fields = identity_fields(case, workload, optimizer)
        fields["case_id"] = ddp_case_id(workload.name, dcase, optimizer, ws)
        fields["effective_batch"] = case.effective_batch * ws
        merged = merge_results(results, case.effective_batch, workload.tokens_per_sample,
                               self._provenance["device_name"], case.amp)
        stats = merged.pop("distributed_stats", {})
        return Record(
            run_id=self.run_id,
            **self._provenance,
            **fields,
            world_size=ws,
            distributed={
                "backend": self.context.backend,
                "no_sync": dcase.no_sync,
                "bucket_cap_mb": self.bucket_cap_mb,
                "timeout_s": self.context.timeout_s,
                "per_rank_effective_batch": case.effective_batch,
                **stats,
            },
            timestamp=utc_timestamp(),
            **merged,
        )

    def run(self, cases: Sequence[DdpCase], sink: Callable[[Record], None] | None = None,
            skip: Iterable[str] = (), progress: RunProgress | None = None) -> list[Record]:
        """Measure every case in order on every rank; `skip` holds ids already measured (the
        same on every rank). Rank 0 calls `sink` and `progress`; every rank returns the records."""
        writer = self.is_writer
        return run_cases(cases, self.measure, self.case_id, sink if writer else None, skip,
                         progress if writer else None)


# --- launching -------------------------------------------------------------------------------

def torchrun_command(nproc_per_node: int, run_args: Sequence[str], python: str = sys.executable) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m accumbench run
    --distributed ARGS`: a single-node job with a local rendezvous on a free port."""
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
            "-m", "accumbench", "run", "--distributed", *run_args]


def launch_env(nproc_per_node: int, device_type: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The children's environment: on the CPU, `OMP_NUM_THREADS` shares the cores between the
    ranks (torchrun would set 1 and warn) unless the user set it."""
    env = dict(environ)
    if device_type == "cpu" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc_per_node))
    return env


def launch_torchrun(nproc_per_node: int, run_args: Sequence[str], device_type: str) -> int:
    """Run the job under torchrun and return the run's exit code (the ranks print for themselves).

    The ranks report the run's exit code through a file named in `$ACCUMBENCH_DDP_EXIT_FILE` and
    exit 0, so an error record (exit 1) does not make torchrun print a failure report; when no
    code came back (a rank crashed), torchrun's own exit code is returned.
    """
    command = torchrun_command(nproc_per_node, run_args)
    with tempfile.TemporaryDirectory(prefix="accumbench-ddp-") as tmp:
        exit_file = Path(tmp) / "exit-code"
        env = {**launch_env(nproc_per_node, device_type), EXIT_FILE_ENV: str(exit_file)}
        process = subprocess.Popen(command, env=env)
        try:
            returncode = process.wait()
        except KeyboardInterrupt:  # torchrun got the Ctrl-C too and stops its ranks; wait for them
            process.wait()
            return 130
        try:
            return int(exit_file.read_text().strip())
        except (OSError, ValueError):
            return returncode


def hand_back_exit_code(code: int, is_writer: bool, environ: Mapping[str, str] = os.environ) -> int:
    """Under `launch_torchrun`: rank 0 writes the run's exit code for the launcher, and every
    rank then exits 0. Otherwise (plain torchrun) the code itself."""
    path = environ.get(EXIT_FILE_ENV)
    if not path:
        return code
    if is_writer:
        Path(path).write_text(f"{code}\n")
    return 0


__all__ = [
    "AllReduceCounter",
    "BACKENDS",
    "CommStats",
    "CommWindowTimer",
    "DdpCase",
    "DistContext",
    "DistributedError",
    "DistributedRunner",
    "ProcessGroups",
    "RankResult",
    "context_from_env",
    "ddp_meter",
    "ddp_case_id",
    "ddp_cases",
    "ddp_loss_weights",
    "failed_result",
    "hand_back_exit_code",
    "init_distributed",
    "launch_torchrun",
    "merge_results",
    "prepare_ddp_case",
    "shard_batch",
    "shutdown",
    "timeout_from_env",
    "torchrun_command",
]
