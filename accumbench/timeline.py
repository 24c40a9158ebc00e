"""Memory timelines: the allocated-bytes curve of one steady-state optimizer step, with phases.

A peak number says how much; the curve says when: activations rising and falling per
micro-step over a gradient floor (accumulation), one hump of two graphs against two humps of
one (multi-task). Tracing is off by default and runs on an extra step after the measured ones,
so it never changes a record's peak or step times.

How each meter traces:
- cpu and estimate: `LiveBytesTracker(record=True)`, the same counter as the measurement, so
  the curve's maximum equals the record's `peak_allocated` to the byte.
- cuda: `torch.cuda.memory_allocated()` sampled after every aten op (a dispatch mode), so
  memory an op allocates and frees internally is not on the curve; the allocator's own peak
  for the traced step is stored beside it (`allocator_peak`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

MAX_POINTS = 4000


@dataclass(frozen=True)
class Timeline:
    """A traced step: `bytes[i]` is live bytes after event i; `marks` are `(event_index, phase,
    micro_step)` phase starts; `peak_breakdown` by category where the meter knows it."""

    bytes: tuple[int, ...]
    marks: tuple[tuple[int, str, int | None], ...]
    source: str  # "tracker" or "cuda-sampled"
    peak_breakdown: dict[str, int] | None = None
    allocator_peak: int | None = None
    case_id: str = ""
    run_id: str = ""

    @property
    def peak(self) -> int:
        """Largest value on the curve."""
        return max(self.bytes) if self.bytes else 0

    @property
    def peak_index(self) -> int:
        """Event index of the (first) maximum."""
        return self.bytes.index(self.peak) if self.bytes else 0

    def phase_at(self, index: int) -> tuple[str, int | None]:
        """The phase (and micro-step) the event at `index` belongs to."""
        current: tuple[str, int | None] = ("start", None)
        for mark_index, phase, micro in self.marks:
            if mark_index > index:
                break
            current = (phase, micro)
        return current

    @property
    def peak_phase(self) -> tuple[str, int | None]:
        """Where in the step the peak happens, e.g. ("backward", 0)."""
        return self.phase_at(self.peak_index)

    def phase_spans(self) -> list[tuple[int, int, str, int | None]]:
        """`(start, end, phase, micro_step)` for each phase, end exclusive."""
        spans = []
        for (start, phase, micro), nxt in zip(self.marks, list(self.marks[1:]) + [(len(self.bytes), "", None)]):
            spans.append((start, nxt[0], phase, micro))
        return spans

    def to_json(self) -> str:
        """One compact JSON line."""
        data = asdict(self)
        data["peak"], data["peak_phase"] = self.peak, list(self.peak_phase)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Timeline":
        """Inverse of `to_json` (derived keys ignored); ValueError for a curve that is not
        byte counts or marks that are not (index, phase, micro-step)."""
        values, marks = tuple(data["bytes"]), tuple(tuple(m) for m in data["marks"])
        if not all(isinstance(v, int) and v >= 0 for v in values):
            raise ValueError("bytes must be a list of byte counts")
        if not all(len(m) == 3 and isinstance(m[0], int) and isinstance(m[1], str) for m in marks):
            raise ValueError("marks must be [index, phase, micro_step] triples")
        return cls(bytes=values, marks=marks,
                   source=data["source"], peak_breakdown=data.get("peak_breakdown"),
                   allocator_peak=data.get("allocator_peak"), case_id=data.get("case_id", ""),
                   run_id=data.get("run_id", ""))


def decimate(values: list[int], marks: list[tuple[int, str, int | None]], max_points: int = MAX_POINTS):
    """Shrink a long curve to about `max_points` keeping each bucket's minimum and maximum (so
    the peak and every hump survive) and remapping the marks' indices."""
    n = len(values)
    if n <= max_points:
        return list(values), list(marks)
    bucket = -(-n // (max_points // 2))
    kept_index: list[int] = []
    for start in range(0, n, bucket):
        chunk = range(start, min(start + bucket, n))
        lo = min(chunk, key=values.__getitem__)
        hi = max(chunk, key=values.__getitem__)
        kept_index.extend(sorted({lo, hi}))
    new_values = [values[i] for i in kept_index]
    # A mark points at the first kept event at or after its original index.
    import bisect

    new_marks = [(bisect.bisect_left(kept_index, index), phase, micro) for index, phase, micro in marks]
    return new_values, new_marks


def sidecar_path(results_path: str | os.PathLike[str]) -> Path:
    """Where the timelines of a results file live: `RESULTS.timelines.jsonl` beside it."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.stem + ".timelines.jsonl")


def backup_suffix(n: int) -> str:
    """The suffix of a results file's n-th backup (`--overwrite` moves the file and its sidecar
    to the first free one): `.bak`, then `.bak.1`, `.bak.2`, ..."""
    return ".bak" if n == 0 else f".bak.{n}"


_BACKUP_SUFFIX = re.compile(r"\.bak(\.[0-9]+)?$")


def append_timeline(path: str | os.PathLike[str], timeline: Timeline) -> None:
    """Append one timeline line to a sidecar file."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(timeline.to_json() + "\n")


def read_timelines(path: str | os.PathLike[str], warn: Callable[[str], None] | None = None) -> Iterator[Timeline]:
    """Every timeline in a sidecar file. A line that is not a timeline (a write a crash cut
    off, a hand edit) is skipped with a warning naming file and line through `warn` (default:
    stderr): a timeline only draws a figure, and the others still can."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield Timeline.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                (warn or _warn)(f"{path}:{lineno}: skipped a line that is not a timeline "
                                f"({type(exc).__name__}: {exc})"[:300])


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def find_timeline(results_path: str | os.PathLike[str], reference: str, case_id: str,
                  run_id: str) -> Timeline | None:
    """The timeline a record refers to (its `timeline` field names the sidecar file); None
    when the sidecar or the timeline is missing."""
    return timelines_of(results_path, reference).get((case_id, run_id))


def timelines_of(results_path: str | os.PathLike[str], reference: str) -> dict[tuple[str, str], Timeline]:
    """The timelines of the sidecar a record's `timeline` field names, by (case_id, run_id);
    empty when the sidecar is missing (or not a file). The records of a backup name the sidecar
    as it was called before `--overwrite` moved both: a backup's sidecar carries its suffix."""
    path = Path(results_path).parent / reference
    backup = _BACKUP_SUFFIX.search(Path(results_path).name)
    if backup is not None:
        path = path.with_name(path.name + backup.group(0))
    if not path.is_file():
        return {}
    return {(t.case_id, t.run_id): t for t in read_timelines(path)}


@dataclass
class _Sampler:
    """Dispatch-mode body for CUDA: samples `memory_allocated()` after every op."""

    read: Callable[[], int]
    values: list[int] = field(default_factory=list)
    marks: list[tuple[int, str, int | None]] = field(default_factory=list)

    def phase(self, name: str, micro_step: int | None) -> None:
        self.marks.append((len(self.values), name, micro_step))
        self.values.append(self.read())
