"""Human formatting at the edge: bytes to KiB/MiB/GiB, rates and times to short strings.

Records store raw bytes and seconds; only the report (and the CLI) turn them into text.
"""

from __future__ import annotations

import math
from typing import Any

from accumbench import textfmt

MISSING = "—"

# Binary units, largest first, as the CUDA allocator and nvidia-smi count them.
BYTE_UNITS: tuple[tuple[str, int], ...] = (
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
)


def is_missing(value: Any) -> bool:
    """True for None and NaN (how pandas shows a missing number)."""
    if value is None:
        return True
    try:
        return math.isnan(value)
    except TypeError:
        return False


def memory_unit(largest_bytes: float) -> tuple[str, int]:
    """The unit (name, bytes per unit) in which `largest_bytes` reads as at least 1.

    A figure uses one unit for its whole axis, picked from its largest value, so that a CPU run
    of a tiny model reads in MiB instead of 0.001 GiB.
    """
    for name, size in BYTE_UNITS:
        if largest_bytes >= size:
            return name, size
    return BYTE_UNITS[-1]


def format_bytes(value: Any, signed: bool = False) -> str:
    """`1610612736` -> `'1.50 GiB'`; None/NaN -> `'—'`. `signed` adds a `+` to positive values.

    The project's one byte format (`accumbench.textfmt.format_bytes`), with the report's dash.
    """
    if is_missing(value):
        return MISSING
    return textfmt.format_bytes(value, signed=signed)


def format_rate(value: Any, unit: str = "/s") -> str:
    """A throughput with three significant figures and a thousands separator: `'12,300/s'`."""
    if is_missing(value):
        return MISSING
    number = float(value)
    if number >= 100:
        return f"{number:,.0f}{unit}"
    return f"{number:.3g}{unit}"


def format_seconds(value: Any) -> str:
    """A duration in the unit that keeps it short: `'12.3 ms'`, `'1.20 s'`, `'850 µs'`."""
    if is_missing(value):
        return MISSING
    number = float(value)
    if number >= 1:
        return f"{number:.2f} s"
    if number >= 1e-3:
        return f"{number * 1e3:.3g} ms"
    return f"{number * 1e6:.3g} µs"


def format_percent(value: Any, signed: bool = False) -> str:
    """A fraction as a percentage: `0.123` -> `'12.3%'`."""
    if is_missing(value):
        return MISSING
    sign = "+" if signed and value > 0 else ""
    return f"{sign}{100 * float(value):.1f}%"


def format_ratio(value: Any) -> str:
    """A relative error or other small positive ratio in scientific notation: `'1.2e-07'`."""
    if is_missing(value):
        return MISSING
    return f"{float(value):.2g}"
