"""Two versions of "the same" model for the gate's equivalence test: the second adds BatchNorm.

Both factories name the workload `norm-mlp`, so their `accumbench check` records share case ids,
as a model before and after a change would.
"""

import torch
import torch.nn.functional as F
from torch import nn

from accumbench import Workload


def _batch(n, generator):
    return torch.randn(n, 12, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def _workload(norm: nn.Module) -> Workload:
    return Workload(
        name="norm-mlp",
        build_model=lambda: nn.Sequential(nn.Linear(12, 16), norm, nn.ReLU(), nn.Linear(16, 3)),
        make_batch=_batch,
        loss=lambda out, batch: F.cross_entropy(out, batch[1]),
    )


def layer_norm() -> Workload:
    """Per-sample normalisation: accumulation is exact."""
    return _workload(nn.LayerNorm(16))


def batch_norm() -> Workload:
    """The 'change': BatchNorm, whose batch statistics break equivalence."""
    return _workload(nn.BatchNorm1d(16))
