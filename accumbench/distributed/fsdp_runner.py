"""Measuring FSDP cases on every rank of the job; rank 0 hands the merged records to the sink.

The DDP runner's job handling (fresh group per case, failures as data, gathered results, rank 0
writes) with FSDP2 in place of DDP: `prepare_fsdp_case` shards the model, `FsdpRunner` counts
the all-gathers and reduce-scatters and writes the FSDP `distributed` block.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
import torch.distributed as dist

from accumbench.cases import Case
from accumbench.distributed.collectives import CollectiveCounter, CollectiveStats
from accumbench.distributed.comm import ddp_meter
from accumbench.distributed.data import ddp_loss_weights, shard_batch
from accumbench.distributed.fsdp import FsdpCase, fsdp_case_id, mesh_of, observe_storage_resizes, shard_model
from accumbench.distributed.process import DistContext
from accumbench.distributed.results import RankResult, failed_result, merge_results
from accumbench.distributed.runner import DistributedRunner, ddp_steps
from accumbench.meters.timing import StepPolicy
from accumbench.environment import utc_timestamp
from accumbench.records import Record
from accumbench.runner import (
    DEFAULT_SEED,
    PreparedCase,
    count_flops,
    default_optimizer_label,
    identity_fields,
    optimizer_label,
    pin_host_batch,
)
from accumbench.scenarios import StepOptions, check_compatible, new_training_state
from accumbench.workloads import Workload


def rank_batches(workload: Workload, case: Case, rank: int, world_size: int, seed: int
                 ) -> tuple[list[Any], list[float]]:
    """This rank's shard of each global micro-batch (`micro_batch * world_size` samples, from
    the same seed as a single-process run) and the loss weights DDP and FSDP share."""
    generator = torch.Generator().manual_seed(seed)
    global_batches = [workload.make_batch(case.micro_batch * world_size, generator)
                      for _ in range(case.accum_steps)]
    shards = [shard_batch(b, rank, world_size) for b in global_batches]
    return shards, ddp_loss_weights(workload, global_batches, shards, case.loss_norm, world_size)


def prepare_fsdp_case(fcase: FsdpCase, workload: Workload, context: DistContext, group: Any,
                      counter: CollectiveCounter | None = None, seed: int = DEFAULT_SEED) -> PreparedCase:
    """Build the case as `prepare_ddp_case` does, with the model sharded by FSDP2 over `group`
    (its collectives counted by `counter`) and this rank's shard of each global micro-batch."""
    case = fcase.case
    check_compatible(case.scenario, workload)
    options = StepOptions(amp=case.amp, set_to_none=case.set_to_none, loss_norm=case.loss_norm)
    torch.manual_seed(seed)
    model = workload.build_model().to(context.device)
    shard_model(model, mesh_of(group, context.device.type), case.amp, fcase.reshard_after_forward, fcase.wrap)
    if counter is not None:
        counter.install(model)
    state = new_training_state(workload, model, context.device, options)
    state.skip_sync_until_last = fcase.no_sync
    shards, weights = rank_batches(workload, case, context.rank, context.world_size, seed)
    if context.device.type == "cuda":
        shards = [pin_host_batch(b) for b in shards]
    return PreparedCase(case.scenario, workload, state, shards, weights)


def collective_fields(stats: Sequence[CollectiveStats]) -> dict[str, Any]:
    """The FSDP `distributed` block's collective figures: counts, bytes and times per step, the
    max over ranks (the ranks agree on counts and bytes), and each rank's times."""
    return {
        "fsdp_units": max(s.units for s in stats),
        "allgathers_per_step": max(s.allgathers_per_step for s in stats),
        "allgather_bytes_per_step": max(s.allgather_bytes_per_step for s in stats),
        "allgather_time_s_per_step": max(s.allgather_time_s_per_step for s in stats),
        "reducescatters_per_step": max(s.reducescatters_per_step for s in stats),
        "reducescatters_per_unit_per_step": max(s.reducescatters_per_step / s.units if s.units else 0.0
                                                for s in stats),
        "reducescatter_bytes_per_step": max(s.reducescatter_bytes_per_step for s in stats),
        "reducescatter_time_s_per_step": max(s.reducescatter_time_s_per_step for s in stats),
        "collective_timing": stats[0].timing,
        "per_rank_allgather_time_s_per_step": [s.allgather_time_s_per_step for s in stats],
        "per_rank_reducescatter_time_s_per_step": [s.reducescatter_time_s_per_step for s in stats],
    }


def fsdp_block(fcase: FsdpCase) -> dict[str, Any]:
    """What the FSDP `distributed` block says of the case's settings."""
    return {"parallel": "fsdp", "no_sync": fcase.no_sync,
            "reshard_after_forward": fcase.reshard_after_forward, "fsdp_wrap": fcase.wrap,
            "mixed_precision": fcase.case.amp if fcase.case.amp != "none" else None}


class FsdpRunner(DistributedRunner):
    """Measures `FsdpCase`s on every rank of the job, as `DistributedRunner` measures DDP cases.
    `measure` and `run` are collective: every rank calls them with the same cases in order."""

    def workload(self, fcase: FsdpCase | Case) -> Workload:
        """Load (once) the workload a case names."""
        case = fcase.case if isinstance(fcase, FsdpCase) else fcase
        if case.compile:  # its compile step would fall inside the warm-up steps, unrecorded
            raise ValueError("--compile is not measured under FSDP yet; run it without --parallel fsdp")
        return super().workload(case)  # the one workload cache, levers applied

    def case_id(self, fcase: FsdpCase) -> str:
        """The id the case's record will carry."""
        workload = self.workload(fcase)
        return fsdp_case_id(workload.name, fcase, default_optimizer_label(workload), self.context.world_size)

    def measure(self, fcase: FsdpCase) -> Record:
        """Measure one case on every rank and merge; every rank returns the same record.
        A failing case (on any rank) becomes an `oom`/`error` record, never an exception."""
        workload = self.workload(fcase)
        group = self.groups.new_case_group()
        counter = CollectiveCounter(self.context.device.type)
        meter, window = ddp_meter(self.context.device.type, counter)
        try:
            with observe_storage_resizes():
                local = self._measure_fsdp(fcase, workload, group, counter, meter, window)
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
        record = self._fsdp_record(fcase, workload, results)
        timeline, self._timeline = self._timeline, None
        if record.status == "ok" and timeline is not None and self.timeline_sink is not None:
            timeline = dataclasses.replace(timeline, case_id=record.case_id, run_id=record.run_id)
            record = dataclasses.replace(record, timeline=self.timeline_sink(record, timeline))
        return record

    def _measure_fsdp(self, fcase: FsdpCase, workload: Workload, group: Any, counter: CollectiveCounter,
                      meter, window) -> RankResult:
        case = fcase.case
        prepared = prepare_fsdp_case(fcase, workload, self.context, group, counter, self.seed)
        # Every rank times the same steps: a fixed count, as under DDP.
        measurement = meter.measure(prepared.step, prepared.state, prepared.batches, case.warmup,
                                    ddp_steps(case.steps))
        flops = count_flops(prepared.step)  # after measuring, on every rank (the step communicates)
        if self.trace_timelines:
            self._timeline = meter.trace(prepared.step, prepared.state)
        model = prepared.state.model
        return RankResult(
            rank=self.context.rank,
            optimizer=optimizer_label(prepared.state.optimizer),
            parameters=sum(p.numel() for p in model.parameters()),  # DTensors: the full shapes
            flops=flops,
            peak_allocated=measurement.peak_allocated,
            first_step_peak_allocated=measurement.first_step_peak_allocated,
            baseline_allocated=measurement.baseline_allocated,
            peak_reserved=measurement.peak_reserved,
            breakdown=measurement.breakdown,
            step_times_s=tuple(measurement.step_times_s),
            collectives=window.stats,
        )

    def _fsdp_record(self, fcase: FsdpCase, workload: Workload, results: Sequence[RankResult]) -> Record:
        case = fcase.case
        ws = self.context.world_size
        optimizer = next((r.optimizer for r in results if r.optimizer), default_optimizer_label(workload))
        fields = identity_fields(case, workload, optimizer, StepPolicy.fixed(ddp_steps(case.steps)))
        fields["measured_steps"] = ddp_steps(case.steps)
        fields["case_id"] = fsdp_case_id(workload.name, fcase, optimizer, ws)
        fields["effective_batch"] = case.effective_batch * ws
        merged = merge_results(results, case.effective_batch, workload.tokens_per_sample,
                               self._provenance["device_name"], case.amp)
        stats = merged.pop("distributed_stats", {})
        if merged["status"] == "ok":
            stats.update(collective_fields([r.collectives for r in results]))
        return Record(
            run_id=self.run_id,
            **self._provenance,
            **fields,
            world_size=ws,
            distributed={
                "backend": self.context.backend,
                **fsdp_block(fcase),
                "timeout_s": self.context.timeout_s,
                "per_rank_effective_batch": case.effective_batch,
                **stats,
            },
            timestamp=utc_timestamp(),
            **merged,
        )


__all__ = ["FsdpRunner", "collective_fields", "fsdp_block", "prepare_fsdp_case", "rank_batches"]
