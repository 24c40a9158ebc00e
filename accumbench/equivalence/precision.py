"""Numeric settings of the check: the dtypes it runs in, their tolerances, determinism.

The check runs in float64 by default so the error it reports is the method's (statistics of a
micro-batch, loss weighting), not float rounding: summing N partial gradients in float32 alone
differs from one large backward by about 1e-7 relative.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from accumbench.workloads.base import Workload

DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}

# Relative gradient error below which accumulation counts as equivalent. float64 rounding over
# a few thousand summed terms stays near 1e-14; float32 near 1e-7. The margins leave room for
# deeper models without hiding a real difference (the smallest real causes give >= 1e-3).
TOLERANCES: dict[str, float] = {"float64": 1e-10, "float32": 1e-5}


class KeepFloat64(TorchFunctionMode):
    """Makes `tensor.float()` a no-op on float64 tensors.

    Losses written for mixed precision upcast logits with `.float()` (the built-ins do); under a
    float64 check that call would silently drop to float32 and the check would measure float32
    rounding. Any other dtype conversion is left alone. Active only around the workload's own
    code (see `keep_float64`): library code such as the GradScaler relies on `.float()`.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.float and args and isinstance(args[0], torch.Tensor) \
                and args[0].dtype == torch.float64 and not kwargs:
            return args[0]
        return func(*args, **(kwargs or {}))


def _under_keep_float64(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with KeepFloat64():
            return fn(*args, **kwargs)

    return wrapped


def keep_float64(workload: Workload) -> Workload:
    """The workload with its `forward` and `loss` run under `KeepFloat64`, so a float64 check
    stays float64 through a loss that upcasts with `.float()`."""
    return dataclasses.replace(workload, forward=_under_keep_float64(workload.forward),
                               loss=_under_keep_float64(workload.loss))


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """`torch.use_deterministic_algorithms(True)` for the block, the previous setting restored."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
