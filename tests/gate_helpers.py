"""Helpers for the regression-gate tests: synthetic step times and hand-made records."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

from accumbench.records import Record


def noisy(rng: random.Random, center: float, n: int, rel_noise: float = 0.05) -> list[float]:
    """Step times with log-normal noise and one slow step, like a real run."""
    out = [center * math.exp(rng.gauss(0, rel_noise)) for _ in range(n)]
    out[rng.randrange(n)] *= 3  # one outlier per run: a GC pause, a page fault
    return out


def record(case_id: str = "mlp/accumulated/mb8/acc4", peak: int | None = 1_000_000,
           times: tuple[float, ...] | list[float] = (0.010,) * 10, **fields: Any) -> Record:
    """A record as the runner would write it, with the fields the gate reads set."""
    times = tuple(times)
    values: dict[str, Any] = dict(
        run_id="run1", case_id=case_id, workload="mlp", scenario="accumulated", micro_batch=8,
        accum_steps=4, effective_batch=32, amp="none", set_to_none=True, optimizer="AdamW(foreach)",
        peak_allocated=peak, step_times_s=times,
        samples_per_s=32 / statistics.median(times) if times else None,
        meter="cpu", device_name="cpu (x86_64, 2 threads)", torch_version="2.13.0+cpu",
    )
    values.update(fields)
    return Record(**values)
