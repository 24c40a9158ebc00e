"""Joining the torchrun job: this rank's place in it, its device and backend, the process groups.

NCCL on CUDA (one GPU per local rank), gloo on the CPU. Every collective has a timeout, so a rank
left waiting for one that failed gives up instead of hanging.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist

# A literal registry: device type -> the torch.distributed backend it runs on.
BACKENDS: dict[str, str] = {"cuda": "nccl", "cpu": "gloo"}
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "ACCUMBENCH_DIST_TIMEOUT"
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A distributed run that cannot start; the message is one line for the user."""


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


MIN_TIMEOUT_S = 1.0  # below it, setting up a case's process group alone times out


def timeout_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """The collective timeout in seconds: `$ACCUMBENCH_DIST_TIMEOUT` (at least `MIN_TIMEOUT_S`),
    else 300."""
    text = environ.get(TIMEOUT_ENV)
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= MIN_TIMEOUT_S:
        raise DistributedError(f"{TIMEOUT_ENV} must be a number of seconds, at least {MIN_TIMEOUT_S:g}, got {text!r}")
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


class PeerFailed(RuntimeError):
    """Another rank could not prepare the case; this one stops before the case's first collective."""


class PreparedAgreement:
    """The ranks agree, on the control group, that each of them prepared the case (model built,
    levers applied, batches made) before the first collective on the case's group. A rank that
    failed joins with its error, so the others stop at once instead of waiting out the collective
    timeout in DDP's first broadcast or FSDP's first all-gather. One agreement per case; every
    rank joins it exactly once, by `ready` or by `failed`."""

    def __init__(self, groups: ProcessGroups) -> None:
        self.groups = groups
        self.joined = False

    def ready(self) -> None:
        """Join as prepared; raises `PeerFailed` naming the first rank that was not."""
        failures = [(rank, error) for rank, error in enumerate(self._join(None)) if error is not None]
        if failures:
            rank, error = failures[0]
            raise PeerFailed(f"rank {rank} failed before the first step: {error}")

    def failed(self, error: str) -> None:
        """Join as failed with `error` (one line), unless this rank already joined (it failed
        after agreeing)."""
        if not self.joined:
            self._join(error)

    def _join(self, error: str | None) -> list[str | None]:
        self.joined = True
        return self.groups.all_gather(error)


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
