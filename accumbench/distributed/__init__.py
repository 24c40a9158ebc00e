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
  per measured step, the slowest rank's time; `samples_per_s` and `tokens_per_s` are the job's
  (`effective_batch` over the median of those times: a synchronous job goes at its slowest
  rank's pace); `flops_per_step` is summed over ranks and `mfu` divides by N devices' peak.
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

Modules: `process` (joining the job, groups, timeouts), `cases` (which cases, their ids), `data`
(shards and loss weights), `comm` (the all-reduce hook), `results` (per-rank results and their
merge), `runner` (`DistributedRunner`), `launch` (torchrun for `--nproc-per-node`).

FSDP2 (`--parallel fsdp`) lives beside them: `fsdp` (cases, ids, sharding, storage resizes),
`collectives` (counting all-gathers and reduce-scatters), `fsdp_runner` (`FsdpRunner`) and
`fake_group` (rank 0's estimate for W ranks on a fake process group); see `fsdp`'s docstring.
"""

from __future__ import annotations

from accumbench.distributed.cases import DdpCase, DistributedCase, ddp_case_id, ddp_cases
from accumbench.distributed.comm import AllReduceCounter, CommStats, CommWindowTimer, ddp_meter
from accumbench.distributed.data import ddp_loss_weights, shard_batch
from accumbench.distributed.launch import EXIT_FILE_ENV, hand_back_exit_code, launch_env, launch_torchrun, torchrun_command
from accumbench.distributed.process import (
    BACKENDS,
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    DistContext,
    DistributedError,
    ProcessGroups,
    context_from_env,
    init_distributed,
    shutdown,
    timeout_from_env,
)
from accumbench.distributed.results import RankResult, failed_result, merge_results
from accumbench.distributed.runner import MIN_DDP_WARMUP, DistributedRunner, ddp_warmup, prepare_ddp_case, wrap_ddp

__all__ = [
    "AllReduceCounter",
    "BACKENDS",
    "CommStats",
    "CommWindowTimer",
    "context_from_env",
    "ddp_case_id",
    "ddp_cases",
    "ddp_loss_weights",
    "ddp_meter",
    "DdpCase",
    "DistributedCase",
    "ddp_warmup",
    "DEFAULT_TIMEOUT_S",
    "DistContext",
    "DistributedError",
    "DistributedRunner",
    "EXIT_FILE_ENV",
    "failed_result",
    "hand_back_exit_code",
    "init_distributed",
    "launch_env",
    "launch_torchrun",
    "merge_results",
    "MIN_DDP_WARMUP",
    "prepare_ddp_case",
    "ProcessGroups",
    "RankResult",
    "shard_batch",
    "shutdown",
    "TIMEOUT_ENV",
    "timeout_from_env",
    "torchrun_command",
    "wrap_ddp",
]
