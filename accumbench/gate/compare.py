"""Match baseline and current results case by case and decide each case's verdict.

Reads DataFrames (from `accumbench.records.load_results`) or sequences of `Record`s; returns a
frozen `Comparison` that the renderers in `accumbench.gate.table` format. Never prints, never
exits: the CLI turns `Comparison.exit_code` into the process's exit status.

Rules (docs/design.md, "Regression gate"):
- A case is matched by `case_id`, and by `world_size` too when it is above 1.
- Both ok: the memory check and the throughput check decide (see `accumbench.gate.checks`);
  for `accumbench check` records the equivalence check too, and for DDP records the count of
  gradient all-reduces per optimizer step (deterministic, so gated exactly).
- ok -> oom or error: a regression; oom/error -> ok: an improvement; not ok on both sides: same.
- Cases on one side only are listed (a regression only with `fail_on_missing`).
- Records of different meters, devices or torch versions are refused (`MismatchError`) unless
  allowed. One exception: under the cpu meter with throughput not gated, the processor model is
  not checked, because the cpu meter's peak counts tensor bytes, which no processor changes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from accumbench.gate.checks import (
    IMPROVEMENT,
    NOT_AVAILABLE,
    REGRESSION,
    SAME,
    UNRESOLVED,
    UNTESTED,
    CommunicationCheck,
    EquivalenceCheck,
    MemoryCheck,
    Outcome,
    ThroughputCheck,
    Tolerance,
)

# Case verdicts, worst first; WARNING is an ungated regression (throughput on foreign CI machines),
# UNRESOLVED a throughput change beyond the tolerance that the runs' scatter hides (never gated).
WARNING = "warning"
VERDICTS = (REGRESSION, WARNING, UNRESOLVED, IMPROVEMENT, SAME)

# Provenance that must agree for numbers to be comparable.
IDENTITY_FIELDS = ("meter", "device_name", "torch_version")


class MismatchError(ValueError):
    """Baseline and current were measured on different meters, devices or torch versions."""

    def __init__(self, mismatches: Sequence["Mismatch"]):
        self.mismatches = tuple(mismatches)
        lines = [
            f"  {m.field}: baseline {m.baseline!r} vs current {m.current!r} ({m.cases} case(s))"
            for m in self.mismatches
        ]
        super().__init__(
            "refusing to compare results measured on different devices, meters or torch versions:\n"
            + "\n".join(lines)
            + "\nMeasure the baseline on the same setup (accumbench baseline update), or pass "
            "--allow-device-mismatch to compare anyway."
        )


@dataclass(frozen=True)
class Mismatch:
    """One provenance field that differs between matched records, and on how many cases."""

    field: str
    baseline: str
    current: str
    cases: int
    fatal: bool


@dataclass(frozen=True)
class CaseComparison:
    """The verdict for one case present on both sides, with the numbers behind it."""

    key: str
    case_id: str
    world_size: int
    baseline_status: str
    current_status: str
    memory: Outcome
    throughput: Outcome
    baseline_samples_per_s: float | None
    current_samples_per_s: float | None
    verdict: str
    reasons: tuple[str, ...]

    @property
    def samples_per_s_change(self) -> float | None:
        """Relative change of throughput (samples/s), None when a side has none."""
        b, c = self.baseline_samples_per_s, self.current_samples_per_s
        if b is None or c is None or b == 0:
            return None
        return c / b - 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        data = dataclasses.asdict(self)
        data["samples_per_s_change"] = self.samples_per_s_change
        return data


@dataclass(frozen=True)
class Comparison:
    """Everything `accumbench compare` reports: per-case verdicts, one-sided cases, warnings."""

    cases: tuple[CaseComparison, ...]
    only_baseline: tuple[str, ...]
    only_current: tuple[str, ...]
    mismatches: tuple[Mismatch, ...]
    notes: tuple[str, ...]
    memory_check: MemoryCheck
    throughput_check: ThroughputCheck
    fail_on_missing: bool = False
    baseline_source: str = "baseline"
    current_source: str = "current"

    def with_verdict(self, verdict: str) -> tuple[CaseComparison, ...]:
        """The cases whose verdict is `verdict`."""
        return tuple(c for c in self.cases if c.verdict == verdict)

    @property
    def regressions(self) -> tuple[CaseComparison, ...]:
        """Cases that fail the gate."""
        return self.with_verdict(REGRESSION)

    @property
    def failed(self) -> bool:
        """True when the gate fails: a regression, or a missing case under `fail_on_missing`."""
        return bool(self.regressions) or (self.fail_on_missing and bool(self.only_baseline))

    @property
    def exit_code(self) -> int:
        """0 when the gate passes, 1 when it fails (2 is for input errors, raised earlier)."""
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        """Number of cases per verdict, plus the one-sided cases."""
        out = {v: len(self.with_verdict(v)) for v in VERDICTS}
        # Across verdicts: the cases whose throughput had too few step times to be tested.
        out["throughput_untested"] = sum(c.throughput.verdict == UNTESTED for c in self.cases)
        out["only_baseline"] = len(self.only_baseline)
        out["only_current"] = len(self.only_current)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json` (stable keys; numbers raw: bytes, seconds, fractions)."""
        return {
            "baseline": self.baseline_source,
            "current": self.current_source,
            "passed": not self.failed,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "memory_gate": {"tolerance": str(self.memory_check.tolerance), "rule": self.memory_check.describe()},
            "throughput_gate": {
                "tolerance": self.throughput_check.tolerance,
                "statistic": self.throughput_check.stat,
                "alpha": self.throughput_check.alpha,
                "test": "mann-whitney-u, two-sided",
                "gated": self.throughput_check.gated,
                "rule": self.throughput_check.describe(),
            },
            "fail_on_missing": self.fail_on_missing,
            "cases": [c.to_dict() for c in self.cases],
            "only_baseline": list(self.only_baseline),
            "only_current": list(self.only_current),
            "mismatches": [dataclasses.asdict(m) for m in self.mismatches],
            "notes": list(self.notes),
        }


def case_key(case_id: str, world_size: int = 1) -> str:
    """The matching key: the case id, qualified by the world size when it is above 1."""
    return case_id if world_size == 1 else f"{case_id} [world_size={world_size}]"


def compare_results(
    baseline: Any,
    current: Any,
    memory_check: MemoryCheck | None = None,
    throughput_check: ThroughputCheck | None = None,
    *,
    allow_device_mismatch: bool = False,
    fail_on_missing: bool = False,
    baseline_source: str = "baseline",
    current_source: str = "current",
) -> Comparison:
    """Compare two sets of results (DataFrames, or sequences of `Record`s or record dicts).

    Raises `MismatchError` when matched records come from different meters, devices or torch
    versions and `allow_device_mismatch` is False.
    """
    memory_check = memory_check or MemoryCheck(Tolerance.parse("0.5%"))
    throughput_check = throughput_check or ThroughputCheck()
    notes: list[str] = []
    base_rows = _index(_as_rows(baseline), "baseline", notes)
    cur_rows = _index(_as_rows(current), "current", notes)

    shared = [k for k in base_rows if k in cur_rows]
    mismatches = _mismatches(
        [(base_rows[k], cur_rows[k]) for k in shared], throughput_check.gated
    )
    fatal = [m for m in mismatches if m.fatal]
    if fatal and not allow_device_mismatch:
        raise MismatchError(fatal)
    for m in mismatches:
        if m.fatal:
            notes.append(
                f"compared despite different {m.field}: {m.baseline!r} vs {m.current!r} (--allow-device-mismatch)"
            )
        else:
            notes.append(
                f"{m.field} differs ({m.baseline!r} vs {m.current!r}); not checked for the cpu meter's "
                "memory, which counts tensor bytes, with throughput not gated"
            )

    cases = tuple(
        _compare_case(k, base_rows[k], cur_rows[k], memory_check, throughput_check) for k in shared
    )
    return Comparison(
        cases=cases,
        only_baseline=tuple(k for k in base_rows if k not in cur_rows),
        only_current=tuple(k for k in cur_rows if k not in base_rows),
        mismatches=tuple(mismatches),
        notes=tuple(notes),
        memory_check=memory_check,
        throughput_check=throughput_check,
        fail_on_missing=fail_on_missing,
        baseline_source=baseline_source,
        current_source=current_source,
    )


def _compare_case(
    key: str,
    base: Mapping[str, Any],
    cur: Mapping[str, Any],
    memory_check: MemoryCheck,
    throughput_check: ThroughputCheck,
) -> CaseComparison:
    b_status, c_status = base["status"], cur["status"]
    if b_status == "ok" and c_status == "ok":
        memory = memory_check.evaluate(_bytes(base.get("peak_allocated")), _bytes(cur.get("peak_allocated")))
        throughput = throughput_check.evaluate(_times(base), _times(cur))
        outcomes: tuple[Outcome, ...] = (memory, throughput)
        labels = [("memory", memory), ("throughput", throughput)]
        if isinstance(base.get("equivalence"), dict) or isinstance(cur.get("equivalence"), dict):
            # `accumbench check` records: gradient equivalence is what they measure.
            equivalence = EquivalenceCheck().evaluate(base.get("equivalence"), cur.get("equivalence"))
            outcomes += (equivalence,)
            labels.append(("equivalence", equivalence))
        if isinstance(base.get("distributed"), dict) and isinstance(cur.get("distributed"), dict):
            # DDP records: the all-reduce count is deterministic, so it is gated exactly.
            communication = CommunicationCheck().evaluate(base["distributed"], cur["distributed"])
            outcomes += (communication,)
            labels.append(("communication", communication))
        if any(o.fails for o in outcomes):
            verdict = REGRESSION
        elif any(o.verdict == REGRESSION for o in outcomes):
            verdict = WARNING
        elif any(o.verdict == UNRESOLVED for o in outcomes):
            verdict = UNRESOLVED
        elif any(o.verdict == IMPROVEMENT for o in outcomes):
            verdict = IMPROVEMENT
        else:
            verdict = SAME
        reasons = tuple(f"{name}: {o.reason}" for name, o in labels
                        if o.verdict in (REGRESSION, UNRESOLVED, IMPROVEMENT))
    else:
        memory = Outcome(NOT_AVAILABLE, "not ok on both sides",
                         _bytes(base.get("peak_allocated")), _bytes(cur.get("peak_allocated")))
        throughput = Outcome(NOT_AVAILABLE, "not ok on both sides", gated=throughput_check.gated)
        if b_status == "ok":
            verdict = REGRESSION
            detail = f": {_first_line(cur.get('error'))}" if cur.get("error") else ""
            what = "runs out of memory" if c_status == "oom" else "fails"
            reasons = (f"status: was ok, now {what} ({c_status}){detail}",)
        elif c_status == "ok":
            verdict = IMPROVEMENT
            reasons = (f"status: was {b_status}, now ok",)
        else:
            verdict = SAME
            reasons = (f"status: {b_status} -> {c_status} (not ok on either side)",)
    return CaseComparison(
        key=key,
        case_id=str(cur["case_id"]),
        world_size=_world_size(cur),
        baseline_status=b_status,
        current_status=c_status,
        memory=memory,
        throughput=throughput,
        baseline_samples_per_s=_measured_rate(base),
        current_samples_per_s=_measured_rate(cur),
        verdict=verdict,
        reasons=reasons,
    )


def _measured_rate(row: Mapping[str, Any]) -> float | None:
    """Samples/s when measured; None for the estimate meter's predicted rate (never compared)."""
    return None if row.get("meter") == "estimate" else _number(row.get("samples_per_s"))


def _mismatches(pairs: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]], throughput_gated: bool) -> list[Mismatch]:
    counts: dict[tuple[str, str, str], int] = {}
    cpu_only: dict[tuple[str, str, str], bool] = {}
    for base, cur in pairs:
        for name in IDENTITY_FIELDS:
            b, c = str(base.get(name) or ""), str(cur.get(name) or "")
            if b != c:
                key = (name, b, c)
                counts[key] = counts.get(key, 0) + 1
                both_cpu = base.get("meter") == "cpu" and cur.get("meter") == "cpu"
                cpu_only[key] = cpu_only.get(key, True) and both_cpu
    out = []
    for (name, b, c), n in counts.items():
        # The cpu meter's peak is live tensor bytes: the processor model cannot change it, so
        # only its timings care, and those only when they are gated.
        forgiven = name == "device_name" and cpu_only[(name, b, c)] and not throughput_gated
        out.append(Mismatch(name, b, c, n, fatal=not forgiven))
    return out


def _index(rows: Iterable[Mapping[str, Any]], side: str, notes: list[str]) -> dict[str, Mapping[str, Any]]:
    """Rows by case key; on duplicates the last row wins (a later run appended to the file)."""
    out: dict[str, Mapping[str, Any]] = {}
    duplicates: dict[str, int] = {}
    for row in rows:
        key = case_key(str(row["case_id"]), _world_size(row))
        if key in out:
            duplicates[key] = duplicates.get(key, 1) + 1
            del out[key]  # re-insert so the order follows the last occurrence
        out[key] = row
    for key, n in duplicates.items():
        notes.append(f"{side}: {n} records for {key}; the last one is used")
    return out


def _as_rows(data: Any) -> list[Mapping[str, Any]]:
    """DataFrame, Records or dicts -> list of mappings with the record fields."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):
        return data.to_dict("records")
    rows = []
    for item in data:
        rows.append(dataclasses.asdict(item) if dataclasses.is_dataclass(item) else dict(item))
    return rows


def _number(value: Any) -> float | None:
    """A finite number, or None for None/NaN (pandas turns missing ints into NaN)."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _bytes(value: Any) -> int | None:
    """Bytes as an int (pandas stores an int column with gaps as floats)."""
    number = _number(value)
    return None if number is None else int(number)


def _times(row: Mapping[str, Any]) -> list[float]:
    times = row.get("step_times_s")
    if times is None or (isinstance(times, float) and math.isnan(times)):
        return []
    return [float(t) for t in times]


def _world_size(row: Mapping[str, Any]) -> int:
    value = _number(row.get("world_size"))
    return int(value) if value is not None else 1


def _first_line(text: Any) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= 160 else line[:157] + "..."
