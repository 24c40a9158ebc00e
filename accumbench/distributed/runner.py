"""Measuring DDP cases on every rank of the job; rank 0 hands the merged records to the sink."""

from __future__ import annotations

import contextlib

import dataclasses
import uuid
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist

from accumbench.cases import Case
from accumbench.distributed.cases import DdpCase, DistributedCase
from accumbench.distributed.comm import AllReduceCounter, CommWindowTimer, ddp_meter
from accumbench.distributed.data import ddp_loss_weights, shard_batch
from accumbench.distributed.process import DistContext, PreparedAgreement, ProcessGroups
from accumbench.distributed.results import RankResult, failed_result, measured_result, merge_results
from accumbench.environment import provenance, utc_timestamp
from accumbench.meters.base import Measurement, Meter
from accumbench.records import Record
from accumbench.runner import (
    DEFAULT_SEED,
    PreparedCase,
    RunProgress,
    WorkloadCache,
    count_flops_checking_losses,
    default_optimizer_label,
    identity_fields,
    prepare_case,
    recorded_options,
    run_cases,
)
from accumbench.meters.timing import StepPolicy
from accumbench.timeline import Timeline
from accumbench.levers import Levers, with_levers
from accumbench.workloads import Workload


# DDP rebuilds its gradient buckets, in the order the first backward produced the gradients,
# during the second iteration's forward: the old and new buckets then coexist. Measuring that
# step would record a one-off, so at least two warm-up steps run before any measured one.
MIN_DDP_WARMUP = 2


# Every rank must time the same number of steps (each step all-reduces), so DDP keeps a fixed
# count: a case without one times this many, never adaptively.
DDP_DEFAULT_STEPS = 10


def ddp_steps(requested: int | None) -> int:
    """The timed steps of a DDP case: the requested count, else `DDP_DEFAULT_STEPS`."""
    return requested if requested is not None else DDP_DEFAULT_STEPS


def ddp_warmup(requested: int) -> int:
    """The warm-up steps a DDP case runs: the requested ones, at least `MIN_DDP_WARMUP`."""
    return max(requested, MIN_DDP_WARMUP)


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


def rank_batches(workload: Workload, case: Case, rank: int, world_size: int, seed: int
                 ) -> tuple[list[Any], list[float]]:
    """This rank's shard of each global micro-batch (`micro_batch * world_size` samples, from
    the same seed as a single-process run) and the loss weights DDP and FSDP share."""
    generator = torch.Generator().manual_seed(seed)
    global_batches = [workload.make_batch(case.micro_batch * world_size, generator)
                      for _ in range(case.accum_steps)]
    shards = [shard_batch(b, rank, world_size) for b in global_batches]
    return shards, ddp_loss_weights(workload, global_batches, shards, case.loss_norm, world_size)


def prepare_distributed_case(case: Case, workload: Workload, context: DistContext, seed: int,
                             wrap: Callable[[torch.nn.Module], torch.nn.Module],
                             ready: Callable[[], None] | None = None) -> PreparedCase:
    """`runner.prepare_case` with the model wrapped by `wrap` (DDP or FSDP, collectives on the
    case's group) and this rank's shard of each global micro-batch. Every rank builds the same
    initial model from the seed. `ready`, when given, is called once the model is built and the
    batches made, before `wrap`'s first collective (the ranks' `PreparedAgreement`)."""
    made: list[tuple[list[Any], list[float]]] = []

    def prepare_then_wrap(model: torch.nn.Module) -> torch.nn.Module:
        # The batches come before the wrap, so a rank whose batches fail says so at the
        # agreement; rank_batches seeds its own generator from `seed` (as prepare_case would).
        made.append(rank_batches(workload, case, context.rank, context.world_size, seed))
        if ready is not None:
            ready()
        return wrap(model)

    return prepare_case(case, workload, context.device, seed, wrap=prepare_then_wrap,
                        make_batches=lambda _: made[0])


def prepare_ddp_case(dcase: DdpCase, workload: Workload, context: DistContext, group: Any,
                     counter: AllReduceCounter, seed: int = DEFAULT_SEED,
                     bucket_cap_mb: float | None = None, ready: Callable[[], None] | None = None) -> PreparedCase:
    """`prepare_distributed_case` with the model in DDP over `group` (its all-reduces counted by
    `counter`'s hook; DDP also broadcasts rank 0's initial model)."""
    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        ddp = wrap_ddp(model, context, group, bucket_cap_mb)
        ddp.register_comm_hook(counter, AllReduceCounter.hook)
        return ddp

    prepared = prepare_distributed_case(dcase.case, workload, context, seed, wrap, ready)
    prepared.state.skip_sync_until_last = dcase.no_sync
    return prepared


class DistributedRunner:
    """Measures `DdpCase`s on every rank of the job; only rank 0 calls the sink and progress.

    `measure` and `run` are collective: every rank calls them with the same cases in the same
    order. `bucket_cap_mb` is DDP's bucket size (None: DDP's default, 25 MiB with a 1 MiB first
    bucket).

    `trace_timelines` (the same on every rank) traces one more step per case after measuring, on
    every rank, since the step all-reduces; rank 0 hands its own curve to `timeline_sink` (as
    `Runner` does), so a record's timeline is rank 0's while its peak is the max over ranks.
    """

    def __init__(self, groups: ProcessGroups, seed: int = DEFAULT_SEED, run_id: str | None = None,
                 bucket_cap_mb: float | None = None, trace_timelines: bool = False,
                 timeline_sink: Callable[[Record, Timeline], str] | None = None) -> None:
        self.groups = groups
        self.context = groups.context
        self.seed = seed
        self.bucket_cap_mb = bucket_cap_mb
        self.trace_timelines = trace_timelines
        self.timeline_sink = timeline_sink if self.context.is_writer else None
        self._timeline: Timeline | None = None  # this rank's trace of the case being measured
        # One run id for the job: rank 0's.
        self.run_id = groups.broadcast((run_id or uuid.uuid4().hex[:12]) if self.context.is_writer else None)
        self._workloads = WorkloadCache()
        meter, _ = ddp_meter(self.context.device.type, AllReduceCounter(None, self.context.device.type))
        self.meter_name = meter.name
        self._provenance = {**provenance(), **meter.device_info(self.context.device), "meter": meter.name,
                            "seed": seed}

    @property
    def is_writer(self) -> bool:
        """True on rank 0."""
        return self.context.is_writer

    def share(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank (collective)."""
        return self.groups.broadcast(value if self.is_writer else None)

    def workload(self, dcase: DistributedCase | Case) -> Workload:
        """Load (once) the workload a case names."""
        case = dcase.case if isinstance(dcase, DistributedCase) else dcase
        if case.compile:  # its compile step would fall inside DDP's warm-up steps, unrecorded
            raise ValueError("--compile is not measured under DDP yet; run it without --nproc-per-node")
        return with_levers(self._workloads.get(case), Levers.of(case))

    def shared_settings(self) -> dict[str, Any]:
        """The settings (`records.RESUME_SETTINGS`) every record of this runner carries."""
        return {k: self._provenance[k] for k in ("seed", "meter", "device_name", "torch_version")}

    def case_settings(self, dcase: DdpCase) -> dict[str, Any]:
        """The per-case settings a record of `dcase` carries (the warm-up DDP really runs, the
        workload factory's options given)."""
        return {"warmup_steps": ddp_warmup(dcase.case.warmup),
                "steps_setting": StepPolicy.fixed(ddp_steps(dcase.case.steps)).setting,
                "workload_options": recorded_options(dcase.case, self.workload(dcase))}

    def case_id(self, dcase: DistributedCase) -> str:
        """The id the case's record will carry."""
        workload = self.workload(dcase)
        return dcase.case_id(workload.name, default_optimizer_label(workload), self.context.world_size)

    def measure(self, dcase: DdpCase) -> Record:
        """Measure one case on every rank and merge; every rank returns the same record.
        A failing case (on any rank) becomes an `oom`/`error` record, never an exception."""
        workload = self.workload(dcase)
        group = self.groups.new_case_group()
        counter = self._new_counter(group)
        meter, window = ddp_meter(self.context.device.type, counter)
        agreement = PreparedAgreement(self.groups)
        try:
            with self._measure_context():
                local = self._measure_local(dcase, workload, group, counter, meter, window, agreement.ready)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failing case is data; the other ranks must hear of it
            local = failed_result(self.context.rank, exc)
            agreement.failed(local.error)
            exc.__traceback__ = None  # its frames hold the case's tensors
        finally:
            meter.release(self.context.device)
        results = self.groups.all_gather(local)
        try:
            dist.destroy_process_group(group)
        except Exception:  # a group broken by a failed rank: dropping it is all we need
            pass
        record = self._record(dcase, workload, results)
        timeline, self._timeline = self._timeline, None
        if record.status == "ok" and timeline is not None and self.timeline_sink is not None:
            timeline = dataclasses.replace(timeline, case_id=record.case_id, run_id=record.run_id)
            record = dataclasses.replace(record, timeline=self.timeline_sink(record, timeline))
        return record

    def _new_counter(self, group: Any) -> Any:
        """What counts and times this runner's collectives (DDP: the all-reduce comm hook)."""
        return AllReduceCounter(group, self.context.device.type)

    def _measure_context(self) -> contextlib.AbstractContextManager:
        """Context a case is measured under (FSDP: its storage resizes reach the tracker)."""
        return contextlib.nullcontext()

    def _measure_local(self, dcase: DdpCase, workload: Workload, group: Any, counter: AllReduceCounter,
                       meter: Meter, window: CommWindowTimer, ready: Callable[[], None]) -> RankResult:
        case = dcase.case
        prepared = prepare_ddp_case(dcase, workload, self.context, group, counter, self.seed,
                                    self.bucket_cap_mb, ready)
        measurement: Measurement = meter.measure(prepared.step, prepared.state, prepared.batches,
                                                 ddp_warmup(case.warmup), ddp_steps(case.steps))
        # After measuring, on every rank (the step all-reduces); also checks the losses are finite.
        flops = count_flops_checking_losses(prepared, steps=ddp_warmup(case.warmup) + ddp_steps(case.steps))
        if self.trace_timelines:
            # After the measured steps (and the all-reduce window), so the record's numbers are
            # untouched. The buckets were allocated during warm-up, where the meter saw them; the
            # tracer starts afresh and must be told they live.
            prepared.state.held_buffers = list(counter.buffers.values())
            self._timeline = meter.trace(prepared.step, prepared.state)
        return measured_result(self.context.rank, prepared.state, prepared.state.model.module, measurement,
                               flops, Levers.of(case).freezes, comm=window.stats)

    def _record(self, dcase: DdpCase, workload: Workload, results: Sequence[RankResult]) -> Record:
        case = dcase.case
        ws = self.context.world_size
        optimizer = next((r.optimizer for r in results if r.optimizer), default_optimizer_label(workload))
        fields = identity_fields(case, workload, optimizer, StepPolicy.fixed(ddp_steps(case.steps)))
        fields["case_id"] = dcase.case_id(workload.name, optimizer, ws)
        fields["effective_batch"] = case.effective_batch * ws
        fields["warmup_steps"] = ddp_warmup(case.warmup)  # what ran, not what was asked
        fields["measured_steps"] = ddp_steps(case.steps)
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
            skip: Iterable[str] = (), progress: RunProgress | None = None,
            stop: Callable[[], bool] | None = None) -> list[Record]:
        """Measure every case in order on every rank; `skip` holds ids already measured (the
        same on every rank). Rank 0 calls `sink` and `progress`; every rank returns the records.
        `stop` is asked on rank 0 after each case and its answer shared, so all ranks end alike."""
        writer = self.is_writer
        agreed_stop = (lambda: bool(self.share(stop() if writer else None))) if stop is not None else None
        return run_cases(cases, self.measure, self.case_id, sink if writer else None, skip,
                         progress if writer else None, agreed_stop)
