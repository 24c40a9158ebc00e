"""The result record: one JSON object per measured case, one per line of a JSONL file.

The field names are the public contract (see docs/design.md, "The record contract"): the report, the
regression gate and outside tools read them. Extend with new optional fields; never rename.
Bytes and seconds are stored raw; formatting happens at the edges (CLI, report).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from accumbench.stats import StepTimes
from accumbench.textfmt import is_integer

SCHEMA_VERSION = 1

STATUSES = ("ok", "oom", "error")
METERS = ("cuda", "cpu", "estimate")
BREAKDOWN_CATEGORIES = ("params", "grads", "optimizer", "activations", "other")
# The settings that change the numbers: `run --resume` refuses a file whose records carry other
# values than the request would (a record without the field, e.g. an older file, is not compared).
RESUME_SETTINGS = ("warmup_steps", "steps_setting", "seed", "meter", "device_name", "torch_version", "assumptions",
                   "workload_options")
# Of those, the settings that belong to one case (a plug-in factory's options need not show in the
# case id): a record of a case the request does not select is never held to them.
CASE_ONLY_SETTINGS = ("workload_options",)
STOP_REASONS = ("ci-target", "time-cap", "fixed")
# Integers a reader turns into numpy int64 columns (report, plan) or multiplies: anything above
# int64 is a corrupted or hand-edited file, and would raise OverflowError there.
MAX_INT = 2**63 - 1
# The field types a reader relies on (beyond the checks of `Record.validate` on values): a
# hand-edited `"case_id": [1]` would otherwise crash `run --resume` (unhashable) and `report`.
_STRING_FIELDS = ("run_id", "case_id", "workload", "scenario", "amp", "optimizer", "loss_norm", "status", "meter",
                  "device_name", "torch_version", "accumbench_version", "timestamp", "hostname", "checkpoint")
_NONEMPTY_STRING_FIELDS = ("case_id", "workload", "scenario")
_OPTIONAL_STRING_FIELDS = ("layout", "steps_setting", "stop_reason", "error", "traceback", "timeline", "freeze",
                           "trainable", "lora", "lever_note", "cuda_version", "git_commit")
_BOOL_FIELDS = ("set_to_none", "retain_graph", "compile")
_COUNT_FIELDS = ("warmup_steps", "measured_steps", "parameters", "trainable_parameters")  # >= 0 or None
_OPTIONAL_SECONDS_FIELDS = ("predicted_step_time_s", "compile_time_s")
_OPTIONAL_DICT_FIELDS = ("equivalence", "distributed", "assumptions")


class RecordError(ValueError):
    """A results file or record that cannot be read: the message names the file and line."""


@dataclass(frozen=True)
class Record:
    """One measured (or estimated, or failed) case.

    Identity fields say what ran, outcome fields whether it worked, memory and speed fields what
    it cost, provenance fields where and with what. Optional fields are None when not known.
    """

    # identity
    run_id: str
    case_id: str
    workload: str
    scenario: str
    micro_batch: int
    accum_steps: int
    effective_batch: int
    amp: str
    set_to_none: bool
    optimizer: str
    loss_norm: str = "mean"
    tasks: tuple[str, ...] | None = None
    layout: str | None = None
    retain_graph: bool = False
    workload_options: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    warmup_steps: int = 0
    measured_steps: int = 0
    seed: int | None = None  # model initialisation and batches (None: written before the field existed)
    # How the step count was decided: the fixed count ('5') or the adaptive policy
    # ('adaptive:0.02:0.5s' = until the median's 95% CI half-width is under 2%, at most 0.5 s).
    steps_setting: str | None = None
    # Why timing stopped: 'ci-target', 'time-cap' or 'fixed'; None when nothing was timed.
    stop_reason: str | None = None
    # outcome
    status: str = "ok"
    error: str | None = None
    traceback: str | None = None  # an error record: the formatted exception, for debugging a plug-in
    # memory, bytes
    peak_allocated: int | None = None
    first_step_peak_allocated: int | None = None
    peak_reserved: int | None = None
    baseline_allocated: int | None = None
    breakdown: dict[str, int] | None = None
    device_total_memory: int | None = None
    # speed
    step_times_s: tuple[float, ...] = ()
    # Rank-based 95% confidence interval (seconds) of the median step time; None below 6 steps.
    median_step_time_ci_s: tuple[float, float] | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    flops_per_step: int | None = None
    mfu: float | None = None
    # The estimate meter's predicted step time (accumbench.steptime); its samples/s, tokens/s and
    # mfu then come from it. Never a measurement: measured times are in step_times_s.
    predicted_step_time_s: float | None = None
    parameters: int | None = None
    # optional blocks written by other commands (check, distributed runs, timelines)
    equivalence: dict[str, Any] | None = None
    distributed: dict[str, Any] | None = None
    timeline: str | None = None
    # estimate meter: what the prediction assumed (device kind, workspaces, attention kernel)
    assumptions: dict[str, Any] | None = None
    # levers beside accumulation (accumbench.levers), all off by default: activation
    # checkpointing (module pattern or "blocks"), frozen/trainable parameter patterns, LoRA spec,
    # torch.compile; what they left trainable; compile wall time (never in step_times_s); a note
    # on what a meter could not see (e.g. the cpu meter counts a compiled case's eager step)
    checkpoint: str = "none"
    freeze: str | None = None
    trainable: str | None = None
    lora: str | None = None
    compile: bool = False
    trainable_parameters: int | None = None
    compile_time_s: float | None = None
    lever_note: str | None = None
    # provenance
    meter: str = "cpu"
    device_name: str = ""
    torch_version: str = ""
    cuda_version: str | None = None
    accumbench_version: str = ""
    git_commit: str | None = None
    timestamp: str = ""
    hostname: str = ""
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        """Serialise to one JSON line (no trailing newline), fields in declaration order."""
        return json.dumps(_jsonable(dataclasses.asdict(self)), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Record":
        """Build a record from a parsed JSON object of the current schema.

        Unknown keys are kept out (a newer minor writer may add fields); missing required keys
        and wrongly typed values raise `RecordError` with the offending field named.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        missing = [
            name
            for name, f in known.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            and name not in data
        ]
        if missing:
            raise RecordError(f"missing field(s): {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        # JSON arrays become tuples; anything else there is named here, not left to tuple()'s
        # "'int' object is not iterable".
        for name in ("tasks", "step_times_s", "median_step_time_ci_s"):
            if values.get(name) is not None and not isinstance(values[name], (list, tuple)):
                raise RecordError(f"{name} must be a list, got {values[name]!r}")
        if values.get("tasks") is not None:
            values["tasks"] = tuple(values["tasks"])
        values["step_times_s"] = tuple(values.get("step_times_s") or ())
        if values.get("median_step_time_ci_s") is not None:
            values["median_step_time_ci_s"] = tuple(values["median_step_time_ci_s"])
        record = cls(**values)
        record.validate()
        return record

    def validate(self) -> None:
        """Raise `RecordError` when a field holds a value the contract does not allow: a wrong
        type (a string that is a list, a count that is text or a float), an integer beyond
        int64, a negative or non-finite number, an effective batch other than micro-batch x
        steps x world size, or a status, meter or stop reason not known."""
        self._validate_types()
        if self.status not in STATUSES:
            raise RecordError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.meter not in METERS:
            raise RecordError(f"meter {self.meter!r} is not one of {', '.join(METERS)}")
        for name in ("micro_batch", "accum_steps", "effective_batch", "world_size"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise RecordError(f"{name} must be a positive integer, got {value!r}")
            _check_not_too_large(name, value)
        # Every reader groups and plots by the effective batch: one that disagrees with the
        # configuration it names is a hand-edited or corrupted record.
        if self.effective_batch != self.micro_batch * self.accum_steps * self.world_size:
            raise RecordError(f"effective_batch {self.effective_batch} is not micro_batch x accum_steps x world_size "
                              f"({self.micro_batch} x {self.accum_steps} x {self.world_size})")
        for name in ("peak_allocated", "first_step_peak_allocated", "peak_reserved",
                     "baseline_allocated", "device_total_memory", "flops_per_step"):
            value = getattr(self, name)
            if value is not None and (not is_integer(value) or value < 0):
                unit = "" if name == "flops_per_step" else " of bytes"
                raise RecordError(f"{name} must be a non-negative integer{unit}, got {value!r}")
            _check_not_too_large(name, value)
        # Throughput that is negative, NaN or infinite is impossible: a reader that drew or
        # gated it would crash or decide on garbage (a hand-edited or corrupted file).
        for name in ("samples_per_s", "tokens_per_s", "mfu"):
            value = getattr(self, name)
            if value is not None and not _non_negative_number(value):
                raise RecordError(f"{name} must be a non-negative finite number, got {value!r}")
        # `accumbench check` writes ok records with scenario "equivalence": they carry an
        # `equivalence` block and measure no memory, so they have no peak.
        if self.status == "ok" and self.peak_allocated is None and self.scenario != "equivalence":
            raise RecordError("an ok record needs peak_allocated")
        if self.stop_reason is not None and self.stop_reason not in STOP_REASONS:
            raise RecordError(f"stop_reason {self.stop_reason!r} is not one of {', '.join(STOP_REASONS)}")
        # A timed step takes time: a zero would make every rate and ratio derived from it infinite.
        bad_times = [t for t in self.step_times_s if not (_non_negative_number(t) and t > 0)]
        if bad_times:
            raise RecordError(
                f"step_times_s must hold positive finite numbers of seconds, got {bad_times[0]!r}"
            )

    def _validate_types(self) -> None:
        """The types of the identity, provenance and block fields (`RecordError` naming one)."""
        for name in _STRING_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise RecordError(f"{name} must be a string, got {value!r}")
        for name in _NONEMPTY_STRING_FIELDS:
            if not getattr(self, name).strip():
                raise RecordError(f"{name} must not be empty")
        for name in _OPTIONAL_STRING_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise RecordError(f"{name} must be a string or null, got {value!r}")
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise RecordError(f"{name} must be true or false, got {value!r}")
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if value is not None and (not is_integer(value) or value < 0):
                raise RecordError(f"{name} must be a non-negative integer, got {value!r}")
            _check_not_too_large(name, value)
        # A seed is whatever torch takes: 64 bits, signed or not.
        if self.seed is not None and (not is_integer(self.seed) or not -(2**63) <= self.seed < 2**64):
            raise RecordError(f"seed must be an integer of at most 64 bits, got {self.seed!r}")
        if not is_integer(self.schema):
            raise RecordError(f"schema must be an integer, got {self.schema!r}")
        if self.tasks is not None and not all(isinstance(t, str) for t in self.tasks):
            raise RecordError(f"tasks must be a list of task names, got {list(self.tasks)!r}")
        if not isinstance(self.workload_options, dict):
            raise RecordError(f"workload_options must be an object, got {self.workload_options!r}")
        for name in _OPTIONAL_DICT_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise RecordError(f"{name} must be an object or null, got {value!r}")
        if self.breakdown is not None:
            if not isinstance(self.breakdown, dict):
                raise RecordError(f"breakdown must be an object of bytes per category, got {self.breakdown!r}")
            for key, value in self.breakdown.items():
                if not is_integer(value) or value < 0:
                    raise RecordError(f"breakdown[{key!r}] must be a non-negative integer of bytes, got {value!r}")
                _check_not_too_large(f"breakdown[{key!r}]", value)
        ci = self.median_step_time_ci_s
        if ci is not None and (len(ci) != 2 or not all(_non_negative_number(t) for t in ci)):
            raise RecordError(f"median_step_time_ci_s must be two non-negative numbers of seconds, got {list(ci)!r}")
        for name in _OPTIONAL_SECONDS_FIELDS:
            value = getattr(self, name)
            if value is not None and not _non_negative_number(value):
                raise RecordError(f"{name} must be a non-negative finite number of seconds, got {value!r}")


def _check_not_too_large(name: str, value: Any) -> None:
    """`RecordError` for an integer above `MAX_INT` (int64): no meter counts that far."""
    if value is not None and value > MAX_INT:
        raise RecordError(f"{name} is too large: {value} (at most 2**63 - 1)")


def _non_negative_number(value: Any) -> bool:
    """True for an int or float that is finite and >= 0 (bools are not numbers here)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def _jsonable(value: Any) -> Any:
    """Turn tuples into lists and reject NaN/inf early with a useful message."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- schema upgrades: each function takes a dict of schema N-1 and returns schema N. -----------
# There is only schema 1 so far; the chain is where a future `upgrade_to_2` goes.
UPGRADES: dict[int, Any] = {}


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a parsed record up to `SCHEMA_VERSION` through the `UPGRADES` chain."""
    version = data.get("schema")
    if not isinstance(version, int):
        raise RecordError("no integer 'schema' field: not an accumbench record")
    if version > SCHEMA_VERSION:
        raise RecordError(
            f"schema {version} is newer than this accumbench understands ({SCHEMA_VERSION}); "
            "upgrade accumbench"
        )
    while version < SCHEMA_VERSION:
        step = UPGRADES.get(version + 1)
        if step is None:
            raise RecordError(f"schema {version} is too old and has no upgrade path")
        data = step(data)
        version = data["schema"]
    return data


# --- files ----------------------------------------------------------------------------------

def append_record(path: str | os.PathLike[str], record: Record) -> None:
    """Append one record to a JSONL file and flush it to disk.

    Called once per measured case, so a crash or Ctrl-C loses nothing already measured.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = record.to_json() + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def write_records(path: str | os.PathLike[str], records: Iterable[Record]) -> None:
    """Write records to a new JSONL file, replacing it atomically (write, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(record.to_json() + "\n")
    os.replace(tmp, path)


def _warn(message: str) -> None:
    """Tell the user on stderr; readers are library code, so no click here."""
    print(f"warning: {message}", file=sys.stderr)


def iter_records(path: str | os.PathLike[str], warn: Callable[[str], None] | None = None) -> Iterator[Record]:
    """Yield the records of one JSONL file; raise `RecordError` naming file and line on bad input.

    Blank lines are skipped. A torn last line (a run killed mid-write, a full disk: invalid JSON
    with no newline after it) is skipped with a warning through `warn` (default: stderr), so
    the file's complete records stay usable; invalid JSON anywhere else is an error. A record
    holding an impossible value (negative or NaN throughput, step time or peak) is an error
    naming file and line, so no command draws, gates or plans on it.
    """
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no such file")
    if path.is_dir():
        raise RecordError(f"{path}: is a directory, expected a .jsonl results file")
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                # append_record writes a line and its newline in one write: a line without
                # its newline at the end of the file is a write that never finished.
                if not line.endswith("\n") and not fh.read(1):
                    (warn or _warn)(f"{path}:{lineno}: skipped a torn last line (an interrupted write; "
                                    f"{len(line)} characters); the file's other records are used")
                    return
                raise RecordError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(data, dict):
                raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(data).__name__}")
            try:
                yield Record.from_dict(upgrade(data))
            except (RecordError, TypeError) as exc:
                raise RecordError(f"{path}:{lineno}: {exc}") from None


def read_records(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Record]:
    """Read every record of one or several JSONL files, in file order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records: list[Record] = []
    for path in paths:
        records.extend(iter_records(path))
    return records


def records_to_frame(records: Sequence[Record]):
    """One row per record, one column per field (pandas DataFrame).

    Adds `median_step_time_s` derived from `step_times_s` (derived, never stored).
    """
    import pandas as pd

    columns = [f.name for f in dataclasses.fields(Record)]
    rows = [dataclasses.asdict(r) for r in records]
    frame = pd.DataFrame(rows, columns=columns)
    frame["median_step_time_s"] = [StepTimes(times).median for times in frame["step_times_s"]]
    return frame


def load_results(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]):
    """Read one or several results files into a pandas DataFrame (one row per record).

    A column `source` names the file each row came from. Raises `RecordError` for a missing,
    corrupt or foreign file, naming the file and line.
    """
    import pandas as pd

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames = []
    for path in paths:
        frame = records_to_frame(list(iter_records(path)))
        frame["source"] = str(path)
        frames.append(frame)
    if not frames:
        return records_to_frame([]).assign(source=pd.Series(dtype=str))
    return pd.concat(frames, ignore_index=True)
