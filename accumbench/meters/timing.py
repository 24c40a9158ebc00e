"""How many steps a meter times: a fixed count, or adaptively until the median is known.

Adaptive timing (as `torch.utils.benchmark`'s `adaptive_autorange` or pyperf's calibration):
after warm-up, time `min_steps` steps, then keep timing in growing chunks until the median's
rank-based 95% interval is narrower than `ci_target` (half-width as a share of the median) or
`time_cap_s` of timed steps have passed. The cap bounds a noisy machine; `min_steps` makes sure
the interval exists at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from accumbench.records import STOP_REASONS
from accumbench.stats import MIN_STEPS_FOR_CI, StepTimes

DEFAULT_CI_TARGET = 0.02
# Per-case caps on timed steps, by device type. CPU: the 31-case smoke suite stays under a minute
# on a 2-core machine; CUDA: the 79-case default suite stays under ten minutes on an H100.
DEFAULT_TIME_CAP_S = {"cpu": 0.5, "cuda": 2.0}
MAX_ADAPTIVE_STEPS = 10_000


@dataclass(frozen=True)
class StepPolicy:
    """A fixed `steps` count, or (steps None) adaptive timing to `ci_target` within `time_cap_s`."""

    steps: int | None = None
    ci_target: float = DEFAULT_CI_TARGET
    time_cap_s: float = DEFAULT_TIME_CAP_S["cpu"]
    min_steps: int = MIN_STEPS_FOR_CI

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be at least 1")
        if not 0 < self.ci_target < 1:
            raise ValueError(f"the CI target must be between 0 and 1 (0.02 = 2%), got {self.ci_target!r}")
        if not self.time_cap_s > 0:
            raise ValueError(f"the time cap must be positive seconds, got {self.time_cap_s!r}")

    @property
    def adaptive(self) -> bool:
        """True when the count is decided while timing."""
        return self.steps is None

    @property
    def setting(self) -> str:
        """The requested policy as recorded (`steps_setting`): '5' or 'adaptive:0.02:0.5s'."""
        if self.steps is not None:
            return str(self.steps)
        return f"adaptive:{self.ci_target:g}:{self.time_cap_s:g}s"

    @classmethod
    def fixed(cls, steps: int) -> "StepPolicy":
        """Exactly `steps` timed steps."""
        return cls(steps=steps)

    @classmethod
    def for_device(cls, device_type: str, ci_target: float | None = None,
                   time_cap_s: float | None = None) -> "StepPolicy":
        """Adaptive timing with the device type's default cap (and target) unless given."""
        return cls(ci_target=DEFAULT_CI_TARGET if ci_target is None else ci_target,
                   time_cap_s=DEFAULT_TIME_CAP_S.get(device_type, DEFAULT_TIME_CAP_S["cuda"])
                   if time_cap_s is None else time_cap_s)


def as_policy(steps: "int | StepPolicy") -> StepPolicy:
    """A meter's `steps` argument as a policy (an int is a fixed count)."""
    return steps if isinstance(steps, StepPolicy) else StepPolicy.fixed(steps)


def time_with_policy(time_steps: Callable[[int], tuple[float, ...]], policy: StepPolicy
                     ) -> tuple[tuple[float, ...], str]:
    """Time steps as `policy` says; return the step times and why timing stopped.

    `time_steps(n)` runs and times `n` steps (a meter's timer). Chunks grow geometrically (half the
    steps so far), so the interval is recomputed O(log n) times and a CUDA timer synchronises as
    rarely; a chunk is never larger than what the remaining time allows at the current median.
    """
    if not policy.adaptive:
        return tuple(time_steps(policy.steps)), "fixed"
    times: list[float] = []
    chunk = policy.min_steps
    while True:
        times += time_steps(chunk)
        summary = StepTimes(times)
        half_width = summary.ci_half_width()
        if half_width is not None and half_width <= policy.ci_target:
            return tuple(times), "ci-target"
        # The cap counts timed steps, not the wall clock: a one-off cost between chunks (the
        # first interval imports scipy, about 2 s on a loaded 2-core machine) must not cut a
        # case to its first chunk.
        remaining = policy.time_cap_s - math.fsum(times)
        if remaining <= 0 or len(times) >= MAX_ADAPTIVE_STEPS:
            return tuple(times), "time-cap"
        affordable = int(remaining / summary.median) + 1 if summary.median > 0 else len(times)
        chunk = max(1, min(max(1, len(times) // 2), affordable, MAX_ADAPTIVE_STEPS - len(times)))


__all__ = ["DEFAULT_CI_TARGET", "DEFAULT_TIME_CAP_S", "STOP_REASONS", "StepPolicy", "as_policy",
           "time_with_policy"]
