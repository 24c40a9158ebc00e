"""Batches for the check: split one large batch into micro-batches, cast its floating tensors.

The large batch and the micro-batches must hold the same samples, so the check makes one batch
of n·N samples with the seeded generator and cuts it along dim 0 (the sample axis, as
`Workload.make_batch` documents it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree


def _sample_count(batch: Any) -> int | None:
    """Length along dim 0 of the first tensor (with at least one dimension) in the batch."""
    for leaf in pytree.tree_leaves(batch):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return leaf.shape[0]
    return None


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Split a batch (a tensor, or tuples/lists/dicts of them, nested) into `parts` micro-batches
    of equal size along dim 0, keeping its structure.

    Every tensor with at least one dimension must have the same number of samples, divisible by
    `parts`; 0-d tensors and non-tensor values (flags, strings) are shared by every micro-batch.
    Raises ValueError naming the problem otherwise.
    """
    if parts < 1:
        raise ValueError(f"cannot split a batch into {parts} parts")
    total = _sample_count(batch)
    if total is None:
        raise ValueError("the batch holds no tensor with a sample dimension to split")
    if total % parts:
        raise ValueError(f"a batch of {total} samples does not split into {parts} equal micro-batches")
    size = total // parts

    leaves, spec = pytree.tree_flatten_with_path(batch)

    def split(path: Any, value: Any) -> list[Any]:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return [value] * parts
        if value.shape[0] != total:
            raise ValueError(
                f"batch{pytree.keystr(path)} has {value.shape[0]} rows along dim 0, the batch has {total} "
                "samples; make_batch must put the sample axis first in every tensor"
            )
        return list(torch.split(value, size))

    pieces = [split(path, value) for path, value in leaves]
    return [pytree.tree_unflatten([p[i] for p in pieces], spec) for i in range(parts)]


def cast_floating(obj: Any, dtype: torch.dtype) -> Any:
    """Cast every floating-point tensor in nested tuples/lists/dicts to `dtype`; integer tensors
    (token ids, labels, masks) and other values are returned as they are."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t, obj)
