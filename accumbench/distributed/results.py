"""What each rank measured, and how the ranks' results merge into one record's fields.

Pure data: testable without processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch.distributed as dist

from accumbench.distributed.comm import CommStats
from accumbench.distributed.process import PeerFailed
from accumbench.environment import peak_flops
from accumbench.runner import error_fields, is_out_of_memory, optimizer_label
from accumbench.stats import StepTimes


@dataclass(frozen=True)
class RankResult:
    """What one rank measured (or how it failed); gathered to every rank, so picklable."""

    rank: int
    status: str = "ok"
    error: str | None = None
    traceback: str | None = None
    collective: bool = False  # the failure looks like waiting on another rank (timeout, peer gone)
    optimizer: str = ""
    parameters: int | None = None
    trainable_parameters: int | None = None  # with frozen parameters (a lever): those that train
    flops: int | None = None
    peak_allocated: int | None = None
    first_step_peak_allocated: int | None = None
    baseline_allocated: int | None = None
    peak_reserved: int | None = None
    breakdown: dict[str, int] | None = None
    step_times_s: tuple[float, ...] = ()
    comm: CommStats | None = None
    collectives: Any = None  # FSDP: `collectives.CollectiveStats` (comm stays None)


def measured_result(rank: int, state: Any, model: Any, measurement: Any, flops: int | None,
                    freezes: bool = False, **stats: Any) -> RankResult:
    """What one rank measured without error: the meter's `measurement` of a case whose
    `TrainingState` is `state`, counting the parameters of the unwrapped `model` (and, when the
    case `freezes` some, those that train), plus the runner's communication `stats` (`comm=`
    for DDP, `collectives=` for FSDP)."""
    return RankResult(
        rank=rank,
        optimizer=optimizer_label(state.optimizer),
        parameters=sum(p.numel() for p in model.parameters()),  # DTensors: the full shapes
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad) if freezes else None,
        flops=flops,
        peak_allocated=measurement.peak_allocated,
        first_step_peak_allocated=measurement.first_step_peak_allocated,
        baseline_allocated=measurement.baseline_allocated,
        peak_reserved=measurement.peak_reserved,
        breakdown=measurement.breakdown,
        step_times_s=tuple(measurement.step_times_s),
        **stats,
    )


_DIST_ERRORS = (dist.DistError,) if hasattr(dist, "DistError") else ()
_COLLECTIVE_TEXT = re.compile(r"timed out|timeout|connection (closed|reset)|gloo|nccl|peer", re.I)


def failed_result(rank: int, exc: BaseException) -> RankResult:
    """A rank's failure as data: oom or error, the first line of the message, and whether it
    looks like a consequence of another rank's failure (a collective that timed out)."""
    collective = (isinstance(exc, (PeerFailed, *_DIST_ERRORS))
                  or bool(_COLLECTIVE_TEXT.search(str(exc))))
    oom = is_out_of_memory(exc)
    fields = error_fields(exc)
    if "find_unused_parameters" in str(exc):  # DDP's advice names a constructor argument the user cannot pass
        fields["error"] = (f"{type(exc).__name__}: some parameters got no gradient in the step (unused in forward); "
                           "DDP runs here without find_unused_parameters: freeze them (--freeze PATTERN) or "
                           "leave them out of the model")
    return RankResult(rank=rank, status=fields["status"], error=fields["error"][:400],
                      traceback=fields["traceback"], collective=collective and not oom)


def merge_results(results: Sequence[RankResult], effective_batch_per_rank: int, tokens_per_sample: int | None,
                  device_name: str, amp: str) -> dict[str, Any]:
    """Record fields from every rank's result: outcome, memory (max over ranks), speed (every
    rank's samples over the median of each step's slowest rank: a synchronous job goes at that
    pace, so summing each rank's own rate would overstate it when ranks differ), and the
    `distributed` block's per-rank lists. Pure: testable without processes."""
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
        return {"status": status, "error": error[:500], "traceback": primary.traceback}
    worst = max(results, key=lambda r: r.peak_allocated or 0)
    medians = [StepTimes(r.step_times_s).median for r in results]
    per_rank_speed = [effective_batch_per_rank / m if m > 0 else None for m in medians]
    step_times = tuple(max(times) for times in zip(*(r.step_times_s for r in results)))
    slowest = StepTimes(step_times)
    median = slowest.median
    samples_per_s = effective_batch_per_rank * len(results) / median if step_times and median > 0 else None
    flops = sum(r.flops for r in results) if all(r.flops is not None for r in results) else None
    peak = peak_flops(device_name, amp)
    reserved = [r.peak_reserved for r in results if r.peak_reserved is not None]
    comm = [r.comm for r in results]
    stats = {} if any(c is None for c in comm) else {  # None: FSDP, which counts its own
        "buckets": max(c.buckets for c in comm),
        "allreduces_per_step": max(c.allreduces_per_step for c in comm),
        "allreduces_per_bucket_per_step": max(c.allreduces_per_step / c.buckets if c.buckets else 0.0
                                              for c in comm),
        "allreduce_time_s_per_step": max(c.time_s_per_step for c in comm),
        "allreduce_timing": comm[0].timing,
        "per_rank_allreduce_time_s_per_step": [c.time_s_per_step for c in comm],
    }
    return {
        "status": "ok",
        "peak_allocated": worst.peak_allocated,
        "first_step_peak_allocated": max(r.first_step_peak_allocated for r in results),
        "baseline_allocated": max(r.baseline_allocated for r in results),
        "peak_reserved": max(reserved) if reserved else None,
        "breakdown": worst.breakdown,
        "parameters": results[0].parameters,
        "trainable_parameters": results[0].trainable_parameters,
        "step_times_s": step_times,
        "median_step_time_ci_s": slowest.median_ci(),
        "stop_reason": "fixed",
        "samples_per_s": samples_per_s,
        "tokens_per_s": samples_per_s * tokens_per_sample if samples_per_s and tokens_per_sample else None,
        "flops_per_step": flops,
        "mfu": flops / median / (peak * len(results)) if (flops and peak and median > 0) else None,
        "distributed_stats": {
            **stats,
            "per_rank_peak_allocated": [r.peak_allocated for r in results],
            "per_rank_samples_per_s": per_rank_speed,
        },
    }
