"""Cases: what to measure. A suite (TOML) or CLI flags expand into a list of `Case`s.

Suite file format (see `accumbench/suites/smoke.toml`):

    description = "..."
    [defaults]                 # any Case knob: warmup, steps, amp, set_to_none, loss_norm
    warmup = 2                 # steps = 5 would fix the count; without it, timing is adaptive

    [[group]]                  # one or more groups
    workload = "gpt"           # built-in or plug-in spec
    options = { size = "tiny" }
    scenarios = ["large-batch", "accumulated"]
    micro_batch = [2, 4, 8]
    accum_steps = [1, 2, 4]    # or: effective_batch = [32] (accum = effective / micro)
    max_effective_batch = 64   # optional cap
    amp = "bf16"               # optional per-group override of a default
    checkpoint = "blocks"      # levers (accumbench.levers): checkpoint, freeze, trainable,
    compile = true             #   lora = "r=8,targets=qkv", compile

Every value is checked when the suite loads (type, range, known key and scenario), and a bad one
is a `SuiteError` naming the file, the group (or [defaults]) and the key: nothing is measured.
Micro-batches are at most 2**31 - 1 and accumulation steps at most 1,000,000 (`MAX_*` below).

Expansion: the (micro_batch, accum_steps) grid; `large-batch` runs one batch of each distinct
effective size (accum 1); `accumulated` runs the pairs with accum >= 2 (accum 1 *is* the large
batch); the multi-task scenarios run every pair.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from accumbench.textfmt import is_integer

BUILTIN_SUITES = ("smoke", "default")
CASE_KNOBS = ("warmup", "steps", "amp", "set_to_none", "loss_norm",
              "checkpoint", "freeze", "trainable", "lora", "compile")
SUITE_KEYS = ("description", "defaults", "group")
# Upper bounds on the grid, for suites and the --micro-batch/--accum-steps flags alike. A batch
# dimension above 2**31 - 1 overflows the 32-bit indexing of many CUDA kernels and could never
# fit in memory anyway. A case makes its N host micro-batches up front and runs N micro-steps
# per optimizer step, so a million is far beyond any run that ends; without a bound a typo like
# 99999999999999999999 hangs the command instead of failing.
MAX_MICRO_BATCH = 2**31 - 1
MAX_ACCUM_STEPS = 10**6
MAX_EFFECTIVE_BATCH = MAX_MICRO_BATCH  # the large batch of an effective batch is one micro-batch
# Warm-up and timed steps: a million is far beyond any useful measurement, and a typo past it
# would run for days instead of failing.
MAX_STEPS = 10**6


class SuiteError(ValueError):
    """A suite file or case selection that cannot be expanded; one line for the user."""


@dataclass(frozen=True)
class Case:
    """One configuration to measure: frozen, hashable, with a stable `case_id`."""

    workload: str
    scenario: str
    micro_batch: int
    accum_steps: int = 1
    options: tuple[tuple[str, Any], ...] = ()
    amp: str = "none"
    set_to_none: bool = True
    loss_norm: str = "mean"
    warmup: int = 2
    # A fixed count of timed steps; None: the runner's adaptive policy (time until the
    # median is known, see `accumbench.meters.timing`).
    steps: int | None = None
    # Levers beside accumulation (accumbench.levers): activation checkpointing, frozen
    # parameters, LoRA adapters, torch.compile. All off by default.
    checkpoint: str = "none"
    freeze: str | None = None
    trainable: str | None = None
    lora: str | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        from accumbench.levers import LeverError, Levers

        problems = [knob_problem("workload", self.workload), knob_problem("scenario", self.scenario),
                    _count_problem("micro_batch", self.micro_batch, MAX_MICRO_BATCH),
                    _count_problem("accum_steps", self.accum_steps, MAX_ACCUM_STEPS),
                    *(knob_problem(key, getattr(self, key)) for key in CASE_KNOBS)]
        problem = next((p for p in problems if p), None)
        if problem:  # a case that cannot run never reaches the runner (every step of it would fail)
            raise SuiteError(problem)
        try:
            levers = Levers.of(self)
        except LeverError as exc:
            raise SuiteError(str(exc)) from None
        object.__setattr__(self, "lora", levers.lora)  # canonical text: one id per setting
        object.__setattr__(self, "options", tuple((key, _hashable(value)) for key, value in self.options))

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step."""
        return self.micro_batch * self.accum_steps

    @property
    def options_dict(self) -> dict[str, Any]:
        """The workload factory's keyword options, lists and dicts as fresh mutable copies (a
        factory may fill in a table it is given: transformers adds `rope_parameters` defaults)."""
        return {key: _mutable(value) for key, value in self.options}

    def label(self) -> str:
        """A short human description for progress lines (levers named when on, so two cases
        that differ only in a lever read differently)."""
        from accumbench.levers import Levers

        return " ".join([f"{self.workload} {self.scenario} mb={self.micro_batch} x{self.accum_steps}",
                         *Levers.of(self).id_parts()])


def _hashable(value: Any) -> Any:
    """`value` with its lists and dicts as torch.fx's immutable list and dict: still a list and
    a dict to the factory (a config's `depths=[2,2,6,2]`, `rope_scaling={...}`) and to JSON,
    but hashable, as a case must be."""
    if not isinstance(value, (list, dict)):
        return value
    from torch.fx.immutable_collections import immutable_dict, immutable_list

    if isinstance(value, list):
        return immutable_list(_hashable(item) for item in value)
    return immutable_dict({key: _hashable(item) for key, item in value.items()})


def _mutable(value: Any) -> Any:
    """`value` with its (immutable) lists and dicts copied into plain ones."""
    if isinstance(value, list):
        return [_mutable(item) for item in value]
    if isinstance(value, dict):
        return {key: _mutable(item) for key, item in value.items()}
    return value


def case_id(workload_name: str, case: Case, optimizer: str, world_size: int = 1) -> str:
    """Stable identity of a case across runs: workload (as named by its factory, which includes
    its size options), scenario and every knob that changes the numbers. Warm-up and step counts
    are not part of it: they change how well, not what, is measured."""
    parts = [
        workload_name,
        case.scenario,
        f"mb{case.micro_batch}",
        f"acc{case.accum_steps}",
        f"amp-{case.amp}",
        "set_to_none" if case.set_to_none else "zero_grad",
        f"norm-{case.loss_norm}",
        optimizer,
    ]
    if world_size != 1:
        parts.append(f"ws{world_size}")
    from accumbench.levers import Levers

    # Levers appear only when on, so the ids of cases without them never change.
    return "/".join(parts + Levers.of(case).id_parts())


def _count_problem(key: str, value: Any, maximum: int) -> str | None:
    """What is wrong with a positive integer setting (None: nothing)."""
    if not is_integer(value) or value < 1:
        return f"{key} must be a positive integer, got {value!r}"
    if value > maximum:
        return f"{key} must be at most {maximum:,}, got {value:,}"
    return None


def knob_problem(key: str, value: Any) -> str | None:
    """What is wrong with one case setting (a `CASE_KNOBS` key, `workload` or `scenario`), as
    one line naming the key; None when the value is fine. Checked when a suite is loaded and
    when a `Case` is made, so a bad value is refused (exit 2) before anything is measured
    instead of failing every case, or being taken as true because it is a non-empty string."""
    if key in ("warmup", "steps"):
        if key == "steps" and value is None:
            return None
        return _count_problem(key, value, MAX_STEPS)
    if key in ("amp", "loss_norm"):
        from accumbench.scenarios import AMP_DTYPES, LOSS_NORMS  # what the scenario code takes

        choices = tuple(AMP_DTYPES) if key == "amp" else LOSS_NORMS
        return None if isinstance(value, str) and value in choices else \
            f"{key} must be one of {', '.join(choices)}, got {value!r}"
    if key in ("set_to_none", "compile"):
        return None if isinstance(value, bool) else f"{key} must be true or false, got {value!r}"
    if key in ("checkpoint", "freeze", "trainable", "lora"):
        if value is None and key != "checkpoint":
            return None
        return None if isinstance(value, str) else f"{key} must be a string, got {value!r}"
    if key in ("workload", "scenario"):
        return None if isinstance(value, str) and value.strip() else f"{key} must be a non-empty string, got {value!r}"
    return f"unknown case setting {key!r}; known: {', '.join(CASE_KNOBS)}"


def expand_group(
    workload: str,
    scenarios: Sequence[str],
    micro_batches: Sequence[int],
    accum_steps: Sequence[int] = (1,),
    effective_batches: Sequence[int] | None = None,
    max_effective_batch: int | None = None,
    options: Mapping[str, Any] | None = None,
    knobs: Mapping[str, Any] | None = None,
) -> list[Case]:
    """Expand one group of the grid into cases (see the module docstring for the rules)."""
    if not scenarios:
        raise SuiteError(f"group for workload {workload!r} names no scenarios")
    for value in list(micro_batches) + list(accum_steps) + list(effective_batches or []):
        if not is_integer(value) or value < 1:
            raise SuiteError(f"batch sizes and accumulation steps must be positive integers, got {value!r}")
    caps = [] if max_effective_batch is None else [max_effective_batch]
    bounded = [("micro_batch", v, MAX_MICRO_BATCH) for v in micro_batches] \
        + [("accum_steps", v, MAX_ACCUM_STEPS) for v in accum_steps] \
        + [("effective_batch", v, MAX_EFFECTIVE_BATCH) for v in effective_batches or []] \
        + [("max_effective_batch", v, MAX_EFFECTIVE_BATCH) for v in caps]
    problem = next((p for p in (_count_problem(*args) for args in bounded) if p), None)
    if problem:
        raise SuiteError(problem)
    if effective_batches:
        pairs = [(m, e // m) for e in effective_batches for m in micro_batches if e % m == 0]
        if not pairs:
            raise SuiteError(f"no micro-batch in {list(micro_batches)} divides effective batches {list(effective_batches)}")
    else:
        pairs = [(m, a) for m in micro_batches for a in accum_steps]
    if max_effective_batch is not None:
        pairs = [(m, a) for m, a in pairs if m * a <= max_effective_batch]
    base = dict(knobs or {})
    unknown = set(base) - set(CASE_KNOBS)
    if unknown:
        raise SuiteError(f"unknown case setting(s): {', '.join(sorted(unknown))}; known: {', '.join(CASE_KNOBS)}")
    frozen_options = tuple(sorted((options or {}).items()))
    cases: list[Case] = []
    seen: set[Case] = set()
    for scenario in scenarios:
        if scenario == "large-batch":
            chosen = [(e, 1) for e in sorted({m * a for m, a in pairs})]
        elif scenario == "accumulated":
            chosen = [(m, a) for m, a in pairs if a >= 2]
        else:
            chosen = pairs
        for m, a in chosen:
            case = Case(workload, scenario, m, a, frozen_options, **base)
            if case not in seen:
                seen.add(case)
                cases.append(case)
    return cases


def _int_list(value: Any, key: str, where: str) -> list[int]:
    if is_integer(value):
        return [value]
    if isinstance(value, list) and all(is_integer(v) for v in value):
        return value
    raise SuiteError(f"{where}: {key} must be an integer or a list of integers, got {value!r}")


def _check_knobs(knobs: Mapping[str, Any], label: str) -> None:
    """Raise `SuiteError` naming `label` and the key for the first bad case setting."""
    unknown = sorted(set(knobs) - set(CASE_KNOBS))
    if unknown:
        raise SuiteError(f"{label}: unknown case setting(s): {', '.join(unknown)}; known: {', '.join(CASE_KNOBS)}")
    for key, value in knobs.items():
        problem = knob_problem(key, value)
        if problem:
            raise SuiteError(f"{label}: {problem}")


def parse_suite(data: Mapping[str, Any], where: str = "suite") -> list[Case]:
    """Expand a parsed suite (the TOML's dict) into cases; `SuiteError` names the file, the
    group (or [defaults]) and the key of the first value of a wrong type or out of range."""
    unknown = sorted(set(data) - set(SUITE_KEYS))
    if unknown:  # e.g. [default] or [[groups]]: silently ignored, the suite would not be what it says
        raise SuiteError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; a suite has "
                         f"{', '.join(SUITE_KEYS)}")
    if not isinstance(data.get("description", ""), str):
        raise SuiteError(f"{where}: description must be a string, got {data['description']!r}")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise SuiteError(f"{where}: defaults must be a table ([defaults]), got {defaults!r}")
    defaults = dict(defaults)
    _check_knobs(defaults, f"{where}: [defaults]")
    groups = data.get("group")
    if not isinstance(groups, list) or not groups:
        raise SuiteError(f"{where}: needs at least one [[group]] table")
    from accumbench.scenarios import SCENARIOS

    cases: list[Case] = []
    for index, group in enumerate(groups, start=1):
        label = f"{where}: group {index}"
        if not isinstance(group, Mapping):
            raise SuiteError(f"{label}: must be a table ([[group]]), got {group!r}")
        group = dict(group)
        try:
            workload = group.pop("workload")
            scenarios = group.pop("scenarios")
            micro = _int_list(group.pop("micro_batch"), "micro_batch", label)
        except KeyError as exc:
            raise SuiteError(f"{label}: missing key {exc.args[0]!r}") from None
        problem = knob_problem("workload", workload)
        if problem:
            raise SuiteError(f"{label}: {problem}")
        if isinstance(scenarios, str):
            scenarios = [scenarios]
        if not isinstance(scenarios, list) or not all(isinstance(s, str) for s in scenarios):
            raise SuiteError(f"{label}: scenarios must be a scenario name or a list of them, got {scenarios!r}")
        bad = [s for s in scenarios if s not in SCENARIOS]
        if bad:
            raise SuiteError(f"{label}: unknown scenario {bad[0]!r} in scenarios; choose from {', '.join(SCENARIOS)}")
        accum = _int_list(group.pop("accum_steps", [1]), "accum_steps", label)
        effective = group.pop("effective_batch", None)
        effective = _int_list(effective, "effective_batch", label) if effective is not None else None
        cap = group.pop("max_effective_batch", None)
        if cap is not None and (not is_integer(cap) or cap < 1):
            raise SuiteError(f"{label}: max_effective_batch must be a positive integer, got {cap!r}")
        options = group.pop("options", {})
        if not isinstance(options, Mapping):
            raise SuiteError(f"{label}: options must be a table (options = {{ size = \"tiny\" }}), got {options!r}")
        _check_knobs(group, label)
        knobs = {**defaults, **group}
        try:
            cases += expand_group(workload, scenarios, micro, accum, effective, cap, options, knobs)
        except SuiteError as exc:
            raise SuiteError(f"{label}: {exc}") from None
    return cases


def load_suite(name_or_path: str) -> list[Case]:
    """Load a built-in suite (`smoke`, `default`) or a suite TOML file."""
    if name_or_path in BUILTIN_SUITES:
        text = resources.files("accumbench.suites").joinpath(f"{name_or_path}.toml").read_text()
        where = f"suite {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise SuiteError(
                f"suite {name_or_path!r} is neither a built-in ({', '.join(BUILTIN_SUITES)}) nor a file"
            )
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SuiteError(f"{where}: not UTF-8 text (byte {exc.start}); a suite is a TOML file") from None
        except OSError as exc:
            raise SuiteError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{where}: not valid TOML ({exc})") from None
    return parse_suite(data, where)


def override(cases: Iterable[Case], **changes: Any) -> list[Case]:
    """Return the cases with the given knobs replaced (CLI flags over a suite); None = keep."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return [dataclasses.replace(c, **changes) for c in cases] if changes else list(cases)


__all__ = ["Case", "MAX_ACCUM_STEPS", "MAX_EFFECTIVE_BATCH", "MAX_MICRO_BATCH",
           "SuiteError", "case_id", "expand_group", "knob_problem", "load_suite", "override", "parse_suite"]
