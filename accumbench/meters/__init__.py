"""Meters: how a step is measured, one class per device kind, same interface."""

from __future__ import annotations

from accumbench.meters.base import Measurement, Meter, WallClockTimer, live_tensors
from accumbench.meters.cpu import CpuMeter
from accumbench.meters.tracker import LiveBytesTracker, cuda_allocator_bytes, exact_bytes

__all__ = [
    "CpuMeter",
    "LiveBytesTracker",
    "Measurement",
    "Meter",
    "WallClockTimer",
    "cuda_allocator_bytes",
    "exact_bytes",
    "live_tensors",
    "meter_for",
]


def meter_for(device_type: str) -> Meter:
    """The meter that measures on this device type ("cuda" or "cpu")."""
    if device_type == "cuda":
        from accumbench.meters.cuda import CudaMeter

        return CudaMeter()
    if device_type == "cpu":
        return CpuMeter()
    raise ValueError(f"no meter for device type {device_type!r}")
