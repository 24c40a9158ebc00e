"""A regression head with a wide output and a reduced elementwise loss (mean squared error,
smooth L1, binary cross-entropy or soft margin): the real kernels leave the scalar loss on a
storage of the elementwise loss's size, which the estimate's fake kernels reproduce
(accumbench/meters/fake_kernels.py)."""

import torch
import torch.nn.functional as F
from torch import nn

from accumbench import Workload

WIDTH, OUT = 16, 256

LOSSES = {
    "mse": lambda out, target: F.mse_loss(out, target),
    "smooth_l1": lambda out, target: F.smooth_l1_loss(out, target),
    "bce": lambda out, target: F.binary_cross_entropy(out.sigmoid(), target.sigmoid()),
    "soft_margin": lambda out, target: F.soft_margin_loss(out, target.sign()),
}


def regression(loss: str = "mse") -> Workload:
    """Linear -> GELU -> Linear to OUT values per sample, trained with `loss` (see LOSSES)."""
    return Workload(
        name=f"toy-regression-{loss}",
        build_model=lambda: nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.GELU(), nn.Linear(WIDTH, OUT)),
        make_batch=lambda n, g: (torch.randn(n, WIDTH, generator=g), torch.randn(n, OUT, generator=g)),
        loss=lambda out, batch: LOSSES[loss](out, batch[1]),
        options={"loss": loss},
    )
