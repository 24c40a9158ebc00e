"""Text at the edges, one helper of each kind: bytes for people, sizes from people, text tables.

Records store raw bytes and seconds; every command that prints them (run, estimate, plan, check,
compare, report) formats through here, so the same number reads the same everywhere. Pure
functions; no torch import, so `report` and `compare` stay light.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any, Iterable, Sequence

# Binary units, as the CUDA allocator and nvidia-smi count memory.
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")

# The largest size accepted: an int64 of bytes (8 EiB). Anything above is a typo, and
# downstream arithmetic (numpy, JSON readers in other languages) would overflow on it.
MAX_SIZE = 2**63 - 1


def format_bytes(value: Any, *, signed: bool = False, missing: str = "-") -> str:
    """Bytes in binary units with three significant figures, never scientific notation.

    `512 B`, `1.50 KiB`, `23.4 MiB`, `1016 KiB`, `5.75 GiB`; None or NaN give `missing`;
    `signed` puts a `+` before positive values (negative values always carry their `-`).

    >>> format_bytes(1040384), format_bytes(6174015488), format_bytes(None)
    ('1016 KiB', '5.75 GiB', '-')
    """
    if value is None:
        return missing
    number = float(value)
    if math.isnan(number):
        return missing
    sign = "+" if signed and number > 0 else "-" if number < 0 else ""
    magnitude = abs(number)
    for unit in _BINARY_UNITS:
        if magnitude < 1024 or unit == _BINARY_UNITS[-1]:
            if unit == "B":
                return f"{sign}{magnitude:.0f} B"
            # Three significant figures: 1016 KiB (not 1.02e+03 KiB), 23.4 MiB, 5.75 GiB.
            digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2
            return f"{sign}{magnitude:.{digits}f} {unit}"
        magnitude /= 1024
    raise AssertionError("unreachable")


_SIZE = re.compile(r"^\s*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([KMGT]i?B|B)?\s*$",
                   re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
SIZE_EXAMPLES = "24GiB, 24GB, 24 GiB, 80e9 or 512"


TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_bool(text: str) -> bool | None:
    """The one reader of boolean words (--assume, --workload-opt, suites' option text): True or
    False for true/false, yes/no, on/off, 1/0 in any case; None for anything else, which the
    caller refuses naming its key (a plain truth test would take 'maybe' for true)."""
    word = text.strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


_BARE_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def is_integer(value: Any) -> bool:
    """True for an int that is not a bool: JSON's and TOML's true and false are ints to Python,
    and a count, size or seed read from a file or flag must not be one of them."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_fractional_bare_number(text: Any) -> bool:
    """True for a finite number with no unit that is not whole ('0.5', '2.5', '1e-3'): not a
    count of bytes, though `parse_size` would round it to one; callers that take bytes refuse it
    (it is most often a percentage or a size missing its '%' or unit)."""
    raw = str(text).strip()
    if not _BARE_NUMBER.fullmatch(raw):
        return False
    number = float(raw)
    return math.isfinite(number) and not number.is_integer()


def parse_size(text: Any) -> int:
    """Bytes from a size a person types: '24GiB' (binary), '24GB' (decimal), '24 GiB', '80e9', '512'.

    Units are case-insensitive (B, KB/KiB, MB/MiB, GB/GiB, TB/TiB); a bare number is bytes.
    Raises ValueError with the accepted forms for anything else, and for negative, NaN,
    infinite or overflowing values ('1e400') or sizes above 8 EiB.

    >>> parse_size("24GiB"), parse_size("24GB"), parse_size("80e9"), parse_size("1.5 MiB")
    (25769803776, 24000000000, 80000000000, 1572864)
    """
    raw = str(text).strip()
    match = _SIZE.match(raw)
    if not match:
        raise ValueError(f"not a size: {raw!r} (examples: {SIZE_EXAMPLES})")
    number_text, unit = match.groups()
    number = float(number_text)  # never raises here: '1e400' becomes inf, checked next
    if not math.isfinite(number):
        raise ValueError(f"size {raw!r} is too large (at most 8 EiB)")
    if number < 0:
        raise ValueError(f"size {raw!r} is negative")
    # Multiply before rounding, exactly for integral inputs: '24GiB' is 24 * 2**30 to the byte.
    scale = _SIZE_UNITS[(unit or "").lower()]
    value = int(number_text) * scale if re.fullmatch(r"[+]?[0-9]+", number_text) else round(number * scale)
    if value > MAX_SIZE:
        raise ValueError(f"size {raw!r} is too large (at most 8 EiB)")
    return value


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Iterable[int] = ()) -> str:
    """Columns aligned as plain text, a dashed rule under the header, built on rich.

    `right` holds the indices of right-aligned (numeric) columns. Cells are shown in full
    (never truncated or wrapped: a case id must stay copyable), as literal text (no markup),
    and the result has no ANSI codes, whether or not the output is a terminal, so it reads
    the same in a pipe, a CI log and a file. Lines carry no trailing spaces; no final newline.
    """
    from rich import box
    from rich.cells import cell_len
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    right_set = set(right)
    body = [[_cell_text(c) for c in row] for row in rows]
    # A header rule of dashes; columns two spaces apart (one space of padding plus the divider).
    rule = box.Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)
    table = Table(box=rule, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), show_header=True,
                  header_style="", highlight=False)
    for index, header in enumerate(headers):
        table.add_column(Text(str(header)), justify="right" if index in right_set else "left",
                         no_wrap=True, overflow="fold")
    for row in body:
        table.add_row(*(Text(c) for c in row))
    # Wide enough for every cell, so rich never shrinks or folds a column.
    widths = [max([cell_len(str(h))] + [cell_len(r[i]) for r in body if i < len(r)]) for i, h in enumerate(headers)]
    console = Console(file=io.StringIO(), width=sum(widths) + 2 * len(widths) + 8, color_system=None,
                      force_terminal=False, force_jupyter=False, no_color=True, highlight=False,
                      emoji=False, markup=False, legacy_windows=False)
    console.print(table, soft_wrap=False)
    text = console.file.getvalue()
    return "\n".join(line.rstrip() for line in text.rstrip("\n").split("\n"))


def _cell_text(value: Any) -> str:
    return "-" if value is None else str(value)


__all__ = ["MAX_SIZE", "SIZE_EXAMPLES", "format_bytes", "parse_size", "text_table"]
