"""Peak memory as a straight line in the micro-batch: the basis for planning.

Within one workload, device, AMP setting and scenario, the steady-state peak of a training step
is, to a very good approximation, `intercept + bytes_per_sample * micro_batch`: the intercept is
what the step holds whatever the batch (parameters, gradients, optimizer state, workspaces), the
slope is what one more sample's activations cost. `report` draws this line and `plan` extrapolates
it to pick a micro-batch that fits a memory budget.

Pure Python on purpose: the fit is a handful of points, and `plan` should not need numpy for it.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class MemoryFit(NamedTuple):
    """Least-squares line `peak = intercept_bytes + bytes_per_sample * micro_batch`.

    Unpacks as `(bytes_per_sample, intercept_bytes, r2, points)`. `r2` is the coefficient of
    determination (1.0 for points exactly on the line); `points` how many it was fitted on:
    below `MIN_POINTS_FOR_R2` the line fits by construction and r² says nothing (`quality`).
    """

    bytes_per_sample: float
    intercept_bytes: float
    r2: float
    points: int = 0

    def quality(self) -> str:
        """How well the line fits, for people: 'r² 0.998, 5 points', or only the point count
        where a line through them fits by construction."""
        return fit_quality(self.r2, self.points)

    def predict(self, micro_batch: float) -> float:
        """Predicted peak in bytes at `micro_batch` samples (an extrapolation outside the data)."""
        return self.intercept_bytes + self.bytes_per_sample * micro_batch


# A line through two points always fits exactly: r² says something from three points on.
MIN_POINTS_FOR_R2 = 3


def fit_quality(r2: float, points: int) -> str:
    """'r² 0.998, 5 points', or only the point count below `MIN_POINTS_FOR_R2`."""
    if points < MIN_POINTS_FOR_R2:
        return f"{points} points: a line through them fits by construction"
    return f"r² {r2:.3f}, {points} points"


def fit_memory_line(micro_batches: Sequence[float], peaks: Sequence[float]) -> MemoryFit:
    """Fit `peak = intercept + slope * micro_batch` by ordinary least squares.

    `micro_batches` and `peaks` (bytes) are paired, same length. At least two distinct
    micro-batch sizes are needed; otherwise (or for mismatched lengths, or non-finite values)
    `ValueError` is raised, because a line through one x value is not determined.

    >>> slope, intercept, r2, points = fit_memory_line([1, 2, 4], [110, 120, 140])
    >>> round(slope, 6), round(intercept, 6), r2
    (10.0, 100.0, 1.0)
    """
    xs = [float(x) for x in micro_batches]
    ys = [float(y) for y in peaks]
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} micro-batch sizes but {len(ys)} peaks")
    if not all(math.isfinite(v) for v in xs + ys):
        raise ValueError("micro-batch sizes and peaks must be finite numbers")
    if len(set(xs)) < 2:
        raise ValueError("need at least two distinct micro-batch sizes to fit a line")
    n = len(xs)
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    # All peaks equal: the flat line explains them exactly, which is a perfect fit, not 0/0.
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return MemoryFit(slope, intercept, r2, n)
