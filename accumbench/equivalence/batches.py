"""Batches for the check: split one large batch into micro-batches, cast its floating tensors.

The large batch and the micro-batches must hold the same samples, so the check makes one batch
of n·N samples with the seeded generator and cuts it along dim 0 (the sample axis, as
`Workload.make_batch` documents it).
"""

from __future__ import annotations

from typing import Any

import torch


def _sample_count(batch: Any) -> int | None:
    """Length along dim 0 of the first tensor (with at least one dimension) in the batch."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() > 0 else None
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        count = _sample_count(value)
        if count is not None:
            return count
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

    def split(value: Any, where: str) -> list[Any]:
        if isinstance(value, torch.Tensor):
            if value.dim() == 0:
                return [value] * parts
            if value.shape[0] != total:
                raise ValueError(
                    f"batch{where} has {value.shape[0]} rows along dim 0, the batch has {total} samples; "
                    "make_batch must put the sample axis first in every tensor"
                )
            return list(torch.split(value, size))
        if isinstance(value, dict):
            pieces = {k: split(v, f"{where}[{k!r}]") for k, v in value.items()}
            return [{k: pieces[k][i] for k in value} for i in range(parts)]
        if isinstance(value, (list, tuple)):
            pieces = [split(v, f"{where}[{j}]") for j, v in enumerate(value)]
            return [_rebuild(value, [p[i] for p in pieces]) for i in range(parts)]
        return [value] * parts

    return split(batch, "")


def _rebuild(like: list | tuple, items: list[Any]) -> Any:
    """A container of `like`'s type (namedtuples included) holding `items`."""
    if isinstance(like, tuple) and hasattr(like, "_fields"):
        return type(like)(*items)
    return type(like)(items)


def cast_floating(obj: Any, dtype: torch.dtype) -> Any:
    """Cast every floating-point tensor in nested tuples/lists/dicts to `dtype`; integer tensors
    (token ids, labels, masks) and other values are returned as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: cast_floating(v, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return _rebuild(obj, [cast_floating(v, dtype) for v in obj])
    return obj
