"""Gradient equivalence: is accumulating N micro-batches the same as one large batch?

`check_workload(workload, CheckConfig(...))` returns one `EquivalenceResult` per (N, loss
normalisation): the relative gradient error, the worst parameters, the diagnosed causes with
their counterfactual errors, the optimizer step's error and the GradScaler window. `to_record`
turns a result into a `Record` (scenario "equivalence"); `format_table` / `format_diagnosis`
render results for a terminal.
"""

from __future__ import annotations

from accumbench.equivalence.batches import cast_floating, split_batch
from accumbench.equivalence.check import (
    DEFAULT_ACCUM_STEPS,
    DEFAULT_MICRO_BATCH,
    EQUIVALENT,
    LOSS_NORM_CHOICES,
    NOT_EQUIVALENT,
    CheckConfig,
    EquivalenceResult,
    check_workload,
    loss_norms_for,
)
from accumbench.equivalence.diagnose import Cause
from accumbench.equivalence.precision import DTYPES, TOLERANCES

__all__ = [
    "DEFAULT_ACCUM_STEPS",
    "DEFAULT_MICRO_BATCH",
    "DTYPES",
    "EQUIVALENT",
    "LOSS_NORM_CHOICES",
    "NOT_EQUIVALENT",
    "TOLERANCES",
    "Cause",
    "CheckConfig",
    "EquivalenceResult",
    "cast_floating",
    "check_workload",
    "loss_norms_for",
    "split_batch",
]
