"""Gradient accumulation under FSDP2 (`torch.distributed.fsdp.fully_shard`), on every rank.

What an FSDP record means: as a DDP record (see `accumbench.distributed`: `micro_batch` per
rank, `effective_batch` global, memory the max over ranks, samples/s the job's), with
the `distributed` block saying `"parallel": "fsdp"` and counting FSDP's collectives instead of
DDP's all-reduces: `allgathers_per_step`, `reducescatters_per_step` (calls per optimizer step on
one rank), their bytes (all-gather output, reduce-scatter input) and time (per rank, from call to
completion, max over ranks), and `fsdp_units` (the modules `fully_shard` was applied to, the
root included: one all-gather and, with sync on, one reduce-scatter per unit and micro-step).

Sharding: `fully_shard` on each FSDP unit, inner first, then on the root. The units are the
modules whose qualified name matches `--fsdp-wrap` (fnmatch), or by default every element of
every `nn.ModuleList` (transformer blocks), or, without one, every top-level child that holds
parameters. `accumulated` runs twice: with `set_requires_gradient_sync(False)` on the
non-final micro-steps (`/fsdp-nosync`: unsharded gradients accumulate, one reduce-scatter per
unit and step) and with sync on every micro-step (`/fsdp-sync`: N reduce-scatters per unit).

Memory: FSDP2 frees and re-allocates the unsharded parameters by resizing their storages
(`storage.resize_`), which no aten op reports; `observe_storage_resizes` tells the live-bytes
tracker (cpu meter, estimate) of each one, and the tracker counts a DTensor's local shard.
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from accumbench.cases import Case, case_id
from accumbench.distributed.cases import DistributedCase
from accumbench.scenarios import AMP_DTYPES

PARALLELS = ("ddp", "fsdp")


@dataclass(frozen=True)
class FsdpCase(DistributedCase):
    """A case run under FSDP2: `no_sync` skips the gradient reduce-scatter on the non-final
    micro-steps; `reshard_after_forward` frees the gathered parameters after each unit's forward;
    `wrap` is the fnmatch pattern of the FSDP units (None: the default units)."""

    reshard_after_forward: bool = True
    wrap: str | None = None
    parallel: ClassVar[str] = "fsdp"

    def case_id(self, workload_name: str, optimizer: str, world_size: int) -> str:
        """The id this case's record carries (`fsdp_case_id`)."""
        return fsdp_case_id(workload_name, self, optimizer, world_size)


def fsdp_cases(cases, reshard_after_forward: bool = True, wrap: str | None = None
               ) -> tuple[list[FsdpCase], list[Case]]:
    """The FSDP variants of the cases, and those FSDP does not run (multi-task): `accumulated`
    twice (sync skipped until the last micro-step, and sync on each), `large-batch` once."""
    kept: list[FsdpCase] = []
    skipped: list[Case] = []
    for case in cases:
        variants = {"accumulated": (True, False), "large-batch": (False,)}.get(case.scenario)
        if variants is None:
            skipped.append(case)
            continue
        kept += [FsdpCase(case, no_sync, reshard_after_forward, wrap) for no_sync in variants]
    return kept, skipped


def fsdp_case_id(workload_name: str, fcase: FsdpCase, optimizer: str, world_size: int) -> str:
    """`case_id` of the wrapped case (with `/wsN` when N > 1) plus `/fsdp-nosync` or
    `/fsdp-sync`, then `-keep` without resharding after forward and `/wrap=PATTERN` when set."""
    base = case_id(workload_name, fcase.case, optimizer, world_size=world_size)
    text = f"{base}/fsdp-{'nosync' if fcase.no_sync else 'sync'}"
    if not fcase.reshard_after_forward:
        text += "-keep"
    if fcase.wrap is not None:
        text += f"/wrap={fcase.wrap}"
    return text


# --- sharding -----------------------------------------------------------------------------------

def fsdp_units(model: nn.Module, pattern: str | None = None) -> list[str]:
    """Qualified names of the modules to `fully_shard` (besides the root), parents after their
    children: the outermost matches of `pattern` (fnmatch's `*` crosses dots, so `blocks.*`
    also matches `blocks.0.attn.qkv`, inside the block it means), else ModuleList elements,
    else top-level children with parameters. Raises ValueError when a pattern matches nothing."""
    named = [(name, module) for name, module in model.named_modules() if name]
    if pattern is not None:
        matched = [name for name, _ in named if fnmatch.fnmatchcase(name, pattern)]
        names = [name for name in matched
                 if not any(name.startswith(outer + ".") for outer in matched if outer != name)]
        if not names:
            raise ValueError(f"--fsdp-wrap {pattern!r} matches no module of {type(model).__name__} "
                             f"(names look like: {', '.join(n for n, _ in named[:5])})")
    else:
        names = [f"{name}.{child}" for name, module in named if isinstance(module, nn.ModuleList)
                 for child, _ in module.named_children()]
        if not names:
            names = [name for name, module in model.named_children()
                     if any(True for _ in module.parameters())]
    return sorted(names, key=lambda n: -n.count("."))  # inner units first


def check_wrap(workload: Any, pattern: str | None) -> None:
    """Raise ValueError (one line) when `pattern` names no module of the workload's model, built
    on the meta device (no memory), before a job launches for it."""
    if pattern is not None:
        with torch.device("meta"):
            model = workload.build_model()
        fsdp_units(model, pattern)


def mixed_precision_policy(amp: str) -> Any:
    """FSDP2's `MixedPrecisionPolicy` for `--amp`: parameters gathered and computed in the AMP
    dtype, gradients reduced in fp32; None without AMP (FSDP's default: no casts)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = AMP_DTYPES[amp]
    return None if dtype is None else MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def shard_model(model: nn.Module, mesh: Any, amp: str = "none", reshard_after_forward: bool = True,
                wrap: str | None = None) -> list[str]:
    """`fully_shard` the units of `model` (see `fsdp_units`) and the root, in place, over `mesh`;
    return the units' names (the root is the last, named "")."""
    from torch.distributed.fsdp import fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    policy = mixed_precision_policy(amp)
    if policy is not None:
        kwargs["mp_policy"] = policy
    names = fsdp_units(model, wrap)
    for name in names:
        fully_shard(model.get_submodule(name), **kwargs)
    fully_shard(model, **kwargs)
    return [*names, ""]


def mesh_of(group: Any, device_type: str) -> Any:
    """A 1-D device mesh over an existing process group (each case's own, or the fake one)."""
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(group, device_type)


# --- memory: FSDP2's storage resizes --------------------------------------------------------------

@contextlib.contextmanager
def observe_storage_resizes() -> Iterator[None]:
    """Tell every live-bytes tracker on the dispatch-mode stack when FSDP2 frees (resizes to 0)
    or re-allocates an unsharded parameter's storage, which `UntypedStorage.resize_` does
    outside the dispatcher. Without this the tracker would count them as always alive."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    from accumbench.meters.tracker import LiveBytesTracker

    alloc, free = _fsdp_param.alloc_storage, _fsdp_param.free_storage

    def notify(tensor: torch.Tensor) -> None:
        for mode in _get_current_dispatch_mode_stack():
            if isinstance(mode, LiveBytesTracker):
                mode.track(tensor)

    def alloc_storage(tensor: torch.Tensor) -> None:
        alloc(tensor)
        notify(tensor)

    def free_storage(tensor: torch.Tensor) -> None:
        free(tensor)
        notify(tensor)

    _fsdp_param.alloc_storage, _fsdp_param.free_storage = alloc_storage, free_storage
    try:
        yield
    finally:
        _fsdp_param.alloc_storage, _fsdp_param.free_storage = alloc, free


def full_gradients(model: nn.Module, group: Any) -> dict[str, torch.Tensor]:
    """Every parameter's gradient gathered to its full shape, by name: the ranks' dim-0 shards
    (FSDP2's `Shard(0)`) concatenated in rank order. A collective over `group`: every rank calls
    it. (Through the object channel: `DTensor.full_tensor()` cannot resolve a group made with
    `new_group` on torch 2.13's functional collectives.)"""
    import torch.distributed as dist

    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        grad = param.grad
        if grad is None:
            continue
        local = getattr(grad, "_local_tensor", grad).detach().clone()
        pieces: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(pieces, local, group=group)
        out[name] = torch.cat(pieces, dim=0) if hasattr(grad, "_local_tensor") else local
    return out


__all__ = ["FsdpCase", "PARALLELS", "fsdp_case_id", "fsdp_cases", "fsdp_units", "full_gradients",
           "mesh_of", "mixed_precision_policy", "observe_storage_resizes", "shard_model"]
