"""Measuring FSDP cases on every rank of the job; rank 0 hands the merged records to the sink.

The DDP runner's job handling (fresh group per case, failures as data, gathered results, rank 0
writes) with FSDP2 in place of DDP: `prepare_fsdp_case` shards the model, `FsdpRunner` counts
the all-gathers and reduce-scatters and writes the FSDP `distributed` block.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch

from accumbench.cases import Case
from accumbench.distributed.collectives import CollectiveCounter, CollectiveStats
from accumbench.distributed.fsdp import FsdpCase, mesh_of, observe_storage_resizes, shard_model
from accumbench.distributed.process import DistContext
from accumbench.distributed.results import RankResult, measured_result, merge_results
from accumbench.distributed.runner import DistributedRunner, ddp_steps, prepare_distributed_case
from accumbench.meters.timing import StepPolicy
from accumbench.environment import utc_timestamp
from accumbench.levers import Levers
from accumbench.records import Record
from accumbench.runner import (
    DEFAULT_SEED,
    PreparedCase,
    count_flops_checking_losses,
    default_optimizer_label,
    identity_fields,
)
from accumbench.workloads import Workload


def prepare_fsdp_case(fcase: FsdpCase, workload: Workload, context: DistContext, group: Any,
                      counter: CollectiveCounter | None = None, seed: int = DEFAULT_SEED,
                      ready: Callable[[], None] | None = None) -> PreparedCase:
    """`prepare_distributed_case` with the model sharded by FSDP2 over `group` (its collectives
    counted by `counter`)."""
    case = fcase.case

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        shard_model(model, mesh_of(group, context.device.type), case.amp, fcase.reshard_after_forward, fcase.wrap)
        if counter is not None:
            counter.install(model)
        return model

    prepared = prepare_distributed_case(case, workload, context, seed, wrap, ready)
    prepared.state.skip_sync_until_last = fcase.no_sync
    return prepared


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

    def _new_counter(self, group: Any) -> CollectiveCounter:
        """FSDP2's all-gathers and reduce-scatters, counted through its custom-collective hooks."""
        return CollectiveCounter(self.context.device.type)

    def _measure_context(self) -> contextlib.AbstractContextManager:
        """FSDP2 frees and re-allocates full parameters by resizing storage: tell the tracker."""
        return observe_storage_resizes()

    def _measure_local(self, fcase: FsdpCase, workload: Workload, group: Any, counter: CollectiveCounter,
                       meter, window, ready: Callable[[], None]) -> RankResult:
        case = fcase.case
        prepared = prepare_fsdp_case(fcase, workload, self.context, group, counter, self.seed, ready)
        # Every rank times the same steps: a fixed count, as under DDP.
        measurement = meter.measure(prepared.step, prepared.state, prepared.batches, case.warmup,
                                    ddp_steps(case.steps))
        # After measuring, on every rank (the step communicates); also checks the losses are finite.
        flops = count_flops_checking_losses(prepared, steps=case.warmup + ddp_steps(case.steps))
        if self.trace_timelines:
            self._timeline = meter.trace(prepared.step, prepared.state)
        return measured_result(self.context.rank, prepared.state, prepared.state.model, measurement, flops,
                               Levers.of(case).freezes, collectives=window.stats)

    def _record(self, fcase: FsdpCase, workload: Workload, results: Sequence[RankResult]) -> Record:
        case = fcase.case
        ws = self.context.world_size
        optimizer = next((r.optimizer for r in results if r.optimizer), default_optimizer_label(workload))
        fields = identity_fields(case, workload, optimizer, StepPolicy.fixed(ddp_steps(case.steps)))
        fields["measured_steps"] = ddp_steps(case.steps)
        fields["case_id"] = fcase.case_id(workload.name, optimizer, ws)
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


__all__ = ["FsdpRunner", "collective_fields", "fsdp_block", "prepare_fsdp_case"]
