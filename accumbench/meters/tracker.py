"""A deterministic live-tensor-bytes tracker: the memory probe of the cpu (and estimate) meters.

A `TorchDispatchMode` sees every tensor an aten op returns, in forward and in backward (the
dispatch-mode state travels to autograd's threads). Each new storage is counted once, with a
weak-reference finaliser that subtracts it when the storage dies. Storages alive before the
mode starts (parameters, optimizer state, the batch) are adopted explicitly. The count is the
sum of live storage bytes, optionally rounded as an allocator would: what
`torch.cuda.max_memory_allocated` counts, without the process noise of RSS.

Each storage carries a category (params, grads, optimizer, activations, other) so the peak can be
broken down: allocations take the category of the current phase (forward -> activations,
optimizer -> optimizer, otherwise other) and gradients are re-filed as `grads` by a
post-accumulate-grad hook. What it cannot see: scratch memory a kernel allocates internally
without returning it as a tensor.
"""

from __future__ import annotations

import weakref
from typing import Callable, Iterable, Mapping

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from accumbench.records import BREAKDOWN_CATEGORIES

PHASE_CATEGORY = {"forward": "activations", "backward": "other", "optimizer": "optimizer"}


class UnsupportedLayout(NotImplementedError):
    """A tensor without one strided storage (sparse, nested): the tracker cannot count it."""

    def __init__(self, layout: torch.layout) -> None:
        name = str(layout).removeprefix("torch.")
        super().__init__(f"{name} tensors are not supported: the memory tracker counts strided storages only "
                         "(a sparse gradient comes from nn.Embedding(sparse=True) or EmbeddingBag(sparse=True))")


def exact_bytes(nbytes: int) -> int:
    """No rounding: the storage's own size (the cpu meter)."""
    return nbytes


def cuda_allocator_bytes(nbytes: int) -> int:
    """What the CUDA caching allocator charges: sizes rounded up to a multiple of 512 bytes."""
    return 0 if nbytes == 0 else -(-nbytes // 512) * 512


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor holding this rank's bytes: a DTensor's (FSDP2's sharded parameters, gradients
    and optimizer state) local shard; any other tensor itself. A DTensor is a wrapper whose own
    storage is not memory."""
    inner = getattr(tensor, "_local_tensor", None)
    return inner if isinstance(inner, torch.Tensor) else tensor


class LiveBytesTracker(TorchDispatchMode):
    """Counts live tensor-storage bytes on one device type; keeps the peak and its breakdown.

    Use as a context manager around the code to measure; call `adopt` first for tensors that
    already exist. `phase(...)` makes it a `PhaseObserver` for the scenarios. With
    `record=True`, `events` holds the live-bytes curve (one value per change) and `marks` the
    phase boundaries as `(event_index, phase, micro_step)`.
    """

    def __init__(
        self,
        device_type: str = "cpu",
        size_of: Callable[[int], int] = exact_bytes,
        record: bool = False,
    ) -> None:
        super().__init__()
        self.device_type = device_type
        self.size_of = size_of
        self.current = 0
        self.peak = 0
        self.by_category = dict.fromkeys(BREAKDOWN_CATEGORIES, 0)
        self.peak_breakdown = dict(self.by_category)
        self._live: WeakIdKeyDictionary = WeakIdKeyDictionary()  # storage -> [bytes, category]
        self._category = "other"
        self._hooks: list = []
        self.record = record
        self.events: list[int] = []
        self.marks: list[tuple[int, str, int | None]] = []

    # --- accounting --------------------------------------------------------------------
    def _change(self, delta: int, category: str) -> None:
        self.current += delta
        self.by_category[category] += delta
        if self.record:
            self.events.append(self.current)
        if self.current > self.peak:
            self.peak = self.current
            self.peak_breakdown = dict(self.by_category)

    def _release(self, entry: list) -> None:
        self._change(-entry[0], entry[1])

    def track(self, tensor: torch.Tensor, category: str | None = None) -> None:
        """Count the tensor's storage if it is new (views and in-place results share one)."""
        tensor = local_tensor(tensor)
        if tensor.device.type != self.device_type:
            return
        if tensor.layout != torch.strided:
            raise UnsupportedLayout(tensor.layout)
        storage = tensor.untyped_storage()
        entry = self._live.get(storage)
        size = self.size_of(storage.nbytes())
        if entry is None:
            entry = self._new_entry(size, category or self._category)
            self._live[storage] = entry
            weakref.finalize(storage, self._release, entry)
            self._change(size, entry[1])
        elif entry[0] != size:  # resized in place
            self._resize(entry, size)

    def _new_entry(self, size: int, category: str) -> list:
        """The bookkeeping of a new storage: `[bytes, category]` (subclasses may append)."""
        return [size, category]

    def _resize(self, entry: list, size: int) -> None:
        self._change(size - entry[0], entry[1])
        entry[0] = size

    def classify(self, tensor: torch.Tensor, category: str) -> None:
        """File an already tracked (or new) tensor's bytes under `category`."""
        tensor = local_tensor(tensor)
        if tensor.device.type != self.device_type:
            return
        entry = self._live.get(tensor.untyped_storage())
        if entry is None:
            self.track(tensor, category)
        elif entry[1] != category:
            self.by_category[entry[1]] -= entry[0]
            self.by_category[category] += entry[0]
            entry[1] = category

    def adopt(self, tensors_by_category: Mapping[str, Iterable[torch.Tensor]]) -> None:
        """Count (and categorise) tensors that existed before tracking started."""
        for category, tensors in tensors_by_category.items():
            for tensor in tensors:
                self.classify(tensor, category)

    def watch_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Re-file each parameter's `.grad` as `grads` as soon as autograd stores it."""
        for p in parameters:
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._on_grad))

    def _on_grad(self, param: torch.Tensor) -> None:
        if param.grad is not None:
            self.classify(param.grad, "grads")

    def reset_peak(self) -> None:
        """Start a new peak from the current live bytes."""
        self.peak = self.current
        self.peak_breakdown = dict(self.by_category)

    # --- PhaseObserver ------------------------------------------------------------------
    def phase(self, name: str, micro_step: int | None) -> None:
        """Allocations from now on take this phase's category; marks the timeline."""
        self._category = PHASE_CATEGORY.get(name, "other")
        if self.record:
            self.marks.append((len(self.events), name, micro_step))

    # --- dispatch -----------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out

    def __exit__(self, *exc) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        return super().__exit__(*exc)
