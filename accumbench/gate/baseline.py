"""Accepting a new baseline: plan what changes, show it, write only when told to.

A baseline is an ordinary results file (JSONL of `Record`s), one record per case, all measured
with one meter on one device with one torch. `plan_update` works out what an update would
add, drop and change; the CLI shows that and writes only after confirmation (or `--yes`), so a
baseline is never overwritten silently. Writing is atomic (`records.write_records`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from accumbench.gate.compare import case_key
from accumbench.records import Record, write_records


class BaselineError(ValueError):
    """The results cannot become a baseline (empty, or measured on mixed setups)."""


@dataclass(frozen=True)
class PeakChange:
    """A case whose outcome moved: peak bytes and status before and after."""

    key: str
    old_status: str
    new_status: str
    old_peak: int | None
    new_peak: int | None


@dataclass(frozen=True)
class BaselinePlan:
    """What `write_baseline` would write and how it differs from the current baseline."""

    records: tuple[Record, ...]
    exists: bool
    added: tuple[str, ...]
    removed: tuple[str, ...]
    kept: tuple[str, ...]  # old cases carried over by a merge
    replaced: tuple[str, ...]
    peak_changes: tuple[PeakChange, ...]
    notes: tuple[str, ...]

    @property
    def overwrites(self) -> bool:
        """True when writing replaces an existing baseline file (confirmation needed)."""
        return self.exists

    def summary(self) -> str:
        """A few lines saying what the update does, for the terminal."""
        lines = [
            f"{len(self.records)} case(s) in the new baseline: "
            f"{len(self.added)} added, {len(self.replaced)} re-measured, {len(self.kept)} kept, "
            f"{len(self.removed)} dropped"
        ]
        for key in self.removed:
            lines.append(f"  dropped: {key}")
        for key in self.added if self.exists else ():  # a first baseline adds everything
            lines.append(f"  added:   {key}")
        for c in self.peak_changes:
            if c.old_status != c.new_status:
                lines.append(f"  status:  {c.key}: {c.old_status} -> {c.new_status}")
            else:
                delta = (c.new_peak or 0) - (c.old_peak or 0)
                rel = f" ({delta / c.old_peak:+.2%})" if c.old_peak else ""
                lines.append(f"  peak:    {c.key}: {c.old_peak} -> {c.new_peak} bytes, {delta:+d}{rel}")
        if self.replaced and not self.peak_changes:
            lines.append("  peak memory and status unchanged for every re-measured case")
        lines += [f"  note:    {n}" for n in self.notes]
        return "\n".join(lines)


def plan_update(
    new: Sequence[Record],
    old: Sequence[Record] | None,
    *,
    merge: bool = False,
    allow_mixed: bool = False,
) -> BaselinePlan:
    """Plan replacing the baseline `old` (None when there is no file yet) with `new`.

    With `merge`, old cases that `new` does not measure are kept (re-baseline a few cases);
    otherwise the new baseline is exactly `new` and the old-only cases are listed as dropped.
    Duplicate cases in `new` keep their last record. Raises `BaselineError` for no records, or
    records of more than one meter/device/torch unless `allow_mixed`.
    """
    notes: list[str] = []
    fresh = _by_key(new, notes)
    if not fresh:
        raise BaselineError("no records to make a baseline from")
    previous = _by_key(old or (), [])
    kept = [k for k in previous if k not in fresh] if merge else []
    records = [previous[k] for k in kept] + list(fresh.values())
    setups = sorted({(r.meter, r.device_name, r.torch_version) for r in records})
    if len(setups) > 1 and not allow_mixed:
        listed = "; ".join(f"meter={m} device={d!r} torch={t}" for m, d, t in setups)
        raise BaselineError(
            f"a baseline holds one setup, these records come from {len(setups)}: {listed}. "
            "Keep one baseline file per device (e.g. results/baseline-cpu.jsonl, results/baseline-h100.jsonl)"
        )
    before_setups = sorted({(r.meter, r.device_name, r.torch_version) for r in previous.values()})
    if before_setups and before_setups != setups:
        # Every old number is then incomparable with the new ones: say so, a silent switch of
        # device under a CI gate would pass anything.
        described = ["; ".join(f"meter={m} device={d!r} torch={t}" for m, d, t in group)
                     for group in (before_setups, setups)]
        notes.append(f"the baseline changes setup: {described[0]} -> {described[1]}")
    errors = [k for k, r in fresh.items() if r.status == "error"]
    if errors:
        notes.append(f"{len(errors)} case(s) have status 'error' and will be baselined as such: {', '.join(errors)}")
    changes = []
    for key, record in fresh.items():
        before = previous.get(key)
        if before is not None and (before.status, before.peak_allocated) != (record.status, record.peak_allocated):
            changes.append(PeakChange(key, before.status, record.status, before.peak_allocated, record.peak_allocated))
    return BaselinePlan(
        records=tuple(records),
        exists=old is not None,
        added=tuple(k for k in fresh if k not in previous),
        removed=tuple(k for k in previous if k not in fresh and not merge),
        kept=tuple(kept),
        replaced=tuple(k for k in fresh if k in previous),
        peak_changes=tuple(changes),
        notes=tuple(notes),
    )


def write_baseline(path, plan: BaselinePlan) -> None:
    """Write the planned baseline atomically (the old file stays intact until the rename) under
    the results file's lock, as every writer does: a run still appending to the file would
    otherwise go on writing into the replaced file and lose what it measures. Raises
    `BaselineError` (one line) when the file is locked or cannot be written."""
    from accumbench.results_file import ResultsFile, ResultsFileError

    results = ResultsFile(path, overwrite=True, command="accumbench baseline update", allowed=())
    try:
        problem = results.problem()
        if problem:
            raise ResultsFileError(problem)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        results.lock()
        write_records(path, plan.records)
    except ResultsFileError as exc:
        raise BaselineError(str(exc)) from None
    except OSError as exc:
        raise BaselineError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        results.release()


def _by_key(records: Sequence[Record], notes: list[str]) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for record in records:
        key = case_key(record.case_id, record.world_size)
        if key in out:
            notes.append(f"{key} appears more than once; the last record is used")
            del out[key]
        out[key] = record
    return out
