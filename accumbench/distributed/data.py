"""Each rank's share of a global batch, and the loss weights that make DDP's averaged gradients
those of the global batch."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.utils._pytree as pytree

from accumbench.scenarios import token_norm_unsupported
from accumbench.workloads import Workload


def shard_batch(batch: Any, rank: int, world_size: int) -> Any:
    """This rank's slice (along dim 0) of every tensor in a global batch, copied so the rank
    holds only its shard. Raises ValueError for a tensor whose first dimension does not split."""
    def shard(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 0:
            return tensor.clone()
        rows = tensor.shape[0]
        if rows % world_size:
            raise ValueError(f"cannot shard a batch tensor of {rows} rows over {world_size} ranks")
        n = rows // world_size
        return tensor[rank * n:(rank + 1) * n].clone()

    return pytree.tree_map_only(torch.Tensor, shard, batch)


def ddp_loss_weights(workload: Workload, global_batches: Sequence[Any], shards: Sequence[Any],
                     loss_norm: str, world_size: int) -> list[float]:
    """Each local micro-batch's loss factor, such that DDP's average over ranks of the summed
    gradients is the gradient of the global batch's loss.

    "mean": 1/N (DDP's average over equal shards makes the global mean). "token":
    `world_size * count(shard_i) / count(all global micro-batches)`: every valid token of the
    effective batch weighs the same, whatever rank holds it.
    """
    n = len(shards)
    if loss_norm == "mean":
        return [1.0 / n] * n
    if workload.count_loss_elements is None:
        raise ValueError(token_norm_unsupported(workload))
    total = sum(workload.count_loss_elements(b) for b in global_batches)
    return [world_size * workload.count_loss_elements(s) / total for s in shards]
