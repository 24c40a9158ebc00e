"""The runner: builds each case, measures it with a meter, turns the result into a Record.

It knows nothing of files or the CLI: each finished record goes to a `sink` callback (the CLI
appends it to the JSONL file at once, so a crash or Ctrl-C loses nothing measured), and progress
goes to an optional `RunProgress`. An out-of-memory error is a result (`status: oom`), memory is
freed, and the run goes on.
"""

from __future__ import annotations

import dataclasses
import math
import traceback
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch
import torch.utils._pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from accumbench.cases import Case, case_id
from accumbench.environment import peak_flops, provenance, utc_timestamp
from accumbench.levers import Levers, levered_record, measure_levered, trainable_parameters, with_levers
from accumbench.meters import Meter, meter_for
from accumbench.meters.base import LAZY_MODULES, Measurement
from accumbench.meters.timing import StepPolicy
from accumbench.records import Record
from accumbench.stats import StepTimes
from accumbench.timeline import Timeline
from accumbench.scenarios import (
    SCENARIOS,
    StepOptions,
    TrainingState,
    check_compatible,
    loss_weights,
    needs_retain_graph,
    new_training_state,
)
from accumbench.workloads import Workload, WorkloadError, load_workload
from accumbench.workloads.base import seed_host_generators

DEFAULT_SEED = 0


class RunProgress(Protocol):
    """Told when each case starts and ends (the CLI draws a progress bar from this)."""

    def case_started(self, index: int, total: int, case: Case) -> None: ...

    def case_finished(self, index: int, total: int, case: Case, record: Record) -> None: ...


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda`/`cpu` as asked (CUDA must exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch.cuda.is_available() is False")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"unsupported device {name!r}; use auto, cuda or cpu")
    return device


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator failure on the CPU."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def pin_host_batch(obj: Any) -> Any:
    """Page-locked copies of a host batch's tensors, so the per-micro-step copy to the GPU is
    asynchronous, as with a DataLoader(pin_memory=True)."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.pin_memory(), obj)


def pin_determinism() -> None:
    """Settings that would otherwise change the numbers between runs."""
    torch.backends.cudnn.benchmark = False


@dataclass
class PreparedCase:
    """A case ready to step: state on the device, host micro-batches, loss weights."""

    scenario: str
    workload: Workload
    state: TrainingState
    batches: list[Any]
    weights: list[float]

    def step(self) -> None:
        """One optimizer step of the case's scenario."""
        SCENARIOS[self.scenario](self.state, self.batches, self.weights)


def prepare_case(case: Case, workload: Workload, device: torch.device, seed: int = DEFAULT_SEED,
                 meter: Meter | None = None, *, wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                 make_batches: Callable[[torch.Generator], tuple[list[Any], list[float]]] | None = None
                 ) -> PreparedCase:
    """Build model, optimizer and batches for a case, seeded so every run builds the same ones.
    With a `meter`, the meter builds the model (the estimate meter makes it of fake tensors).
    The DDP runner passes `wrap` (the model in DistributedDataParallel) and `make_batches`
    (this rank's shards of the global micro-batches and their loss weights)."""
    check_compatible(case.scenario, workload, case.loss_norm)
    options = StepOptions(amp=case.amp, set_to_none=case.set_to_none, loss_norm=case.loss_norm)
    seed_host_generators(seed)
    model = meter.build_model(workload, device) if meter else workload.build_model().to(device)
    if any(torch.nn.parameter.is_lazy(p) for p in model.parameters()):
        raise ValueError(LAZY_MODULES)
    if wrap is not None:
        model = wrap(model)
    state = new_training_state(workload, model, device, options)
    generator = torch.Generator().manual_seed(seed)
    if make_batches is not None:
        host_batches, weights = make_batches(generator)
    else:
        host_batches = [workload.make_batch(case.micro_batch, generator) for _ in range(case.accum_steps)]
        weights = loss_weights(workload, host_batches, case.loss_norm)
    if device.type == "cuda":
        host_batches = [pin_host_batch(b) for b in host_batches]
    return PreparedCase(case.scenario, workload, state, host_batches, weights)


class NonFiniteLoss(ValueError):
    """A loss was NaN or infinite; the message names the micro-step."""


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of one more call of `step`, counted by `FlopCounterMode`. Run after the measured
    steps: the counter's hooks would otherwise take part in the first step's peak."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def _first_nonfinite(log: list) -> tuple[int | None, float] | None:
    """(micro-step, value) of the first NaN/inf loss in a step's loss log, or None (one sync)."""
    if not log:
        return None
    values = torch.stack([loss.detach().float().reshape(()) for _, loss in log]).cpu().tolist()
    return next(((micro_step, value) for (micro_step, _), value in zip(log, values) if not math.isfinite(value)),
                None)


def _logged_step(prepared: PreparedCase, step: Callable[[], None]) -> tuple[int | None, float] | None:
    log: list = []
    prepared.state.loss_log = log
    try:
        step()
    finally:
        prepared.state.loss_log = None
    return _first_nonfinite(log)


def count_flops_checking_losses(prepared: PreparedCase, rebuild: Callable[[], PreparedCase] | None = None,
                                steps: int = 0) -> int:
    """`count_flops` of one more step that also keeps each micro-step's loss; raise
    `NonFiniteLoss` when one is NaN or infinite.

    The check rides on the FLOP-count step, after the measured ones, so the timed steps gain no
    host synchronisation (one sync per case). A NaN in a measured step reaches the parameters,
    or (fp16, where the scaler skips the step) recurs on the same batches, so it shows here.
    To name where it first appeared, `rebuild()` makes the case afresh (same seed: same model
    and batches) and up to `steps` steps are replayed with the losses checked after each."""
    flops = 0

    def counted() -> None:
        nonlocal flops
        flops = count_flops(prepared.step)

    found = _logged_step(prepared, counted)
    if found is None:
        return flops
    where = f"after the {steps} measured step(s)"
    if rebuild is not None:
        replay = rebuild()
        for index in range(1, steps + 1):
            first = _logged_step(replay, replay.step)
            if first is not None:
                found, where = first, f"in optimizer step {index} (replayed from the start)"
                break
        del replay
    micro_step, value = found
    at = f"micro-step {micro_step + 1} of {len(prepared.batches)}" if micro_step is not None else "a step"
    raise NonFiniteLoss(f"the loss is {value} at {at}, {where}; check the model, the data and the learning rate")


class WorkloadCache:
    """Workloads loaded once per (spec, options): both runners build many cases of one."""

    def __init__(self) -> None:
        self._workloads: dict[tuple, Workload] = {}

    def get(self, case: Case) -> Workload:
        """The workload a case names, loaded on first use."""
        key = (case.workload, case.options)
        if key not in self._workloads:
            self._workloads[key] = load_workload(case.workload, case.options_dict)
        return self._workloads[key]


def error_fields(exc: BaseException) -> dict[str, Any]:
    """A failed case's outcome fields: oom or error, the first line of the message, and (error)
    the formatted traceback so a plug-in author can debug. Drops the exception's frames after,
    since they hold the case's tensors."""
    status = "oom" if is_out_of_memory(exc) else "error"
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if status == "error" else None
    exc.__traceback__ = None
    return {"status": status, "error": f"{type(exc).__name__}: {first_line}".strip()[:500],
            "traceback": text[-20000:] if text else None}


def case_policy(case: Case, timing: StepPolicy) -> StepPolicy:
    """How a case's steps are timed: its fixed `steps` count, else the run's `timing` policy."""
    return StepPolicy.fixed(case.steps) if case.steps is not None else timing


def recorded_options(case: Case, workload: Workload) -> dict[str, Any]:
    """The workload options a record keeps: the factory's resolved ones (defaults included),
    else those the case gave. `--resume` compares a request's with a record's by this one
    function, so a default is never "given on one side only"."""
    return dict(workload.options) or case.options_dict


def identity_fields(case: Case, workload: Workload, optimizer_name: str,
                    policy: StepPolicy | None = None) -> dict[str, Any]:
    """The record's identity fields for a case: what ran, with which knobs. `policy`: how its
    steps are timed (default: the case's count, or adaptive on the CPU)."""
    policy = policy or case_policy(case, StepPolicy.for_device("cpu"))
    return {
        "case_id": case_id(workload.name, case, optimizer_name),
        "workload": workload.name,
        "scenario": case.scenario,
        "micro_batch": case.micro_batch,
        "accum_steps": case.accum_steps,
        "effective_batch": case.effective_batch,
        "amp": case.amp,
        "set_to_none": case.set_to_none,
        "optimizer": optimizer_name,
        "loss_norm": case.loss_norm,
        "tasks": workload.tasks or None,
        "layout": workload.layout,
        "retain_graph": needs_retain_graph(case.scenario, workload),
        "workload_options": recorded_options(case, workload),
        "warmup_steps": case.warmup,
        "measured_steps": case.steps or 0,  # adaptive: the count timed, set with the step times
        "steps_setting": policy.setting,
        **Levers.of(case).fields(),
    }


def optimizer_label(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer's class and implementation, e.g. `AdamW(foreach)`."""
    defaults = optimizer.defaults
    impl = "fused" if defaults.get("fused") else "foreach" if defaults.get("foreach") else "for-loop"
    return f"{type(optimizer).__name__}({impl})"


def speed_fields(measurement: Measurement, case: Case, workload: Workload, flops: int | None,
                 device_name: str) -> dict[str, Any]:
    """Throughput from the median step time (robust to the odd slow step), or from the estimate
    meter's predicted step time (kept in `predicted_step_time_s`); else no speeds. MFU is
    against the dense half-precision peak under bf16/fp16 autocast (the device's, or for an
    estimate the peak its device kind assumes, as `--assume` set it); None otherwise."""
    predicted = measurement.predicted_step_time_s
    if not measurement.step_times_s and not predicted:
        return {"step_times_s": (), "samples_per_s": None, "tokens_per_s": None,
                "flops_per_step": flops, "mfu": None}
    times = StepTimes(measurement.step_times_s)
    median = times.median if measurement.step_times_s else predicted
    samples_per_s = case.effective_batch / median if median > 0 else None
    peak = peak_flops(device_name, case.amp)
    assumed = (measurement.assumptions or {}).get(f"peak_flops_{case.amp}")
    if case.amp in ("bf16", "fp16") and isinstance(assumed, (int, float)) and assumed > 0:
        peak = assumed
    return {
        "step_times_s": measurement.step_times_s,
        "median_step_time_ci_s": times.median_ci() if measurement.step_times_s else None,
        "stop_reason": measurement.stop_reason,
        "measured_steps": len(times),
        "samples_per_s": samples_per_s,
        "tokens_per_s": samples_per_s * workload.tokens_per_sample
        if samples_per_s and workload.tokens_per_sample else None,
        "flops_per_step": flops,
        "mfu": flops / median / peak if (flops and peak and median > 0) else None,
        **({"predicted_step_time_s": predicted} if predicted and not measurement.step_times_s else {}),
    }


class Runner:
    """Measures cases on one device with one meter; workloads are loaded once per spec."""

    def __init__(self, device: torch.device, meter: Meter | None = None, seed: int = DEFAULT_SEED,
                 run_id: str | None = None,
                 timeline_sink: Callable[[Record, Timeline], str] | None = None,
                 timing: StepPolicy | None = None) -> None:
        """`timeline_sink`, when given, turns tracing on: after each measured case one more step
        is traced and handed over with its record; the sink stores it and returns the reference
        the record's `timeline` field keeps. `timing`: how cases without a fixed `steps` count
        are timed (default: adaptive, with the device type's time cap)."""
        self.device = device
        self.timing = timing or StepPolicy.for_device(device.type)
        self.timeline_sink = timeline_sink
        self.meter = meter or meter_for(device.type)
        self.seed = seed
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self._workloads = WorkloadCache()
        self._provenance = {**provenance(), **self.meter.device_info(device), "meter": self.meter.name,
                            "seed": seed}

    is_writer = True  # one process: it writes the results (the DDP runner: rank 0 only)

    def share(self, value: Any) -> Any:
        """What every process of the job agrees on (one process: the value itself)."""
        return value

    def workload(self, case: Case) -> Workload:
        """Load (once) the workload a case names."""
        return with_levers(self._workloads.get(case), Levers.of(case))

    def shared_settings(self) -> dict[str, Any]:
        """The settings (`records.RESUME_SETTINGS`) every record of this runner carries."""
        return {k: self._provenance[k] for k in ("seed", "meter", "device_name", "torch_version")}

    def case_settings(self, case: Case) -> dict[str, Any]:
        """The per-case settings a record of `case` carries (warm-up, the step policy and the
        workload factory's options given)."""
        return {"warmup_steps": case.warmup, "steps_setting": case_policy(case, self.timing).setting,
                "workload_options": recorded_options(case, self.workload(case))}

    def measure(self, case: Case) -> Record:
        """Measure one case; never raises for a failing case (OOM and errors become records),
        except for KeyboardInterrupt and a workload that cannot be loaded at all."""
        workload = self.workload(case)
        try:
            with self.meter.case_context():
                return self._measure_ok(case, workload)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failing case is data, not the end of the run
            try:
                policy = case_policy(case, self.timing)
            except ValueError:
                # The case's own step count is what failed (e.g. steps=-1 from code that built
                # the Case around its checks): the error record must still be written, not a
                # second exception chained onto the first.
                policy = self.timing
            outcome = error_fields(exc)
            if outcome["status"] == "oom" and self.meter.name == "estimate":
                # Fake tensors allocate nothing: what ran out is the host (the case's real host
                # micro-batches, say). A predicted device OOM is `estimate.predicted_oom`'s, not this.
                outcome = {**outcome, "status": "error", "error": (
                    "out of memory on the host, not a predicted device OOM (the estimate's device "
                    "tensors are fake): " + outcome["error"])[:500]}
            return Record(
                run_id=self.run_id,
                **self._provenance,
                **identity_fields(case, workload, default_optimizer_label(workload), policy),
                **outcome,
                timestamp=utc_timestamp(),
            )
        finally:
            self.meter.release(self.device)

    def _measure_ok(self, case: Case, workload: Workload) -> Record:
        prepared = prepare_case(case, workload, self.device, self.seed, meter=self.meter)
        measurement, lever_fields = measure_levered(case, self.meter, prepared, case_policy(case, self.timing))
        # A meter that counts FLOPs itself (the estimate meter) is spared FlopCounterMode.
        if self.meter.counts_flops:
            flops = measurement.flops_per_step
        else:
            flops = count_flops_checking_losses(
                prepared, lambda: prepare_case(case, workload, self.device, self.seed, meter=self.meter),
                case.warmup + len(measurement.step_times_s))
        record = levered_record(self.ok_record(case, workload, prepared.state, measurement, flops), lever_fields)
        if self.timeline_sink is not None:
            # After the measured steps, so tracing never touches the record's numbers.
            timeline = self.meter.trace(prepared.step, prepared.state)
            timeline = dataclasses.replace(timeline, case_id=record.case_id, run_id=record.run_id)
            record = dataclasses.replace(record, timeline=self.timeline_sink(record, timeline))
        return record

    def ok_record(self, case: Case, workload: Workload, state: TrainingState, measurement: Measurement,
                  flops: int | None) -> Record:
        """The record of a case measured (or estimated) without error."""
        fields = {**identity_fields(case, workload, optimizer_label(state.optimizer),
                                    case_policy(case, self.timing)),
                  **speed_fields(measurement, case, workload, flops, self._provenance["device_name"])}
        if measurement.measured_steps is not None:  # what the meter ran, not what the case asked
            fields.update(warmup_steps=measurement.warmup_steps, measured_steps=measurement.measured_steps,
                          steps_setting=str(measurement.measured_steps))
        return Record(
            run_id=self.run_id,
            **self._provenance,
            **fields,
            status="ok",
            peak_allocated=measurement.peak_allocated,
            first_step_peak_allocated=measurement.first_step_peak_allocated,
            peak_reserved=measurement.peak_reserved,
            baseline_allocated=measurement.baseline_allocated,
            breakdown=measurement.breakdown,
            assumptions=measurement.assumptions,
            parameters=sum(p.numel() for p in state.model.parameters()),
            trainable_parameters=trainable_parameters(state.model) if Levers.of(case).freezes else None,
            timestamp=utc_timestamp(),
        )

    def run(self, cases: Sequence[Case], sink: Callable[[Record], None] | None = None,
            skip: Iterable[str] = (), progress: RunProgress | None = None,
            stop: Callable[[], bool] | None = None) -> list[Record]:
        """Measure every case in order; `skip` holds case ids already measured (resume);
        `stop()`, asked after each case, ends the run early (a results file that failed)."""
        return run_cases(cases, self.measure, self.case_id, sink, skip, progress, stop)

    def case_id(self, case: Case) -> str:
        """The id a case's record will carry (needs the workload's name and optimizer)."""
        workload = self.workload(case)
        return case_id(workload.name, case, default_optimizer_label(workload))


def run_cases(cases: Sequence[Any], measure: Callable[[Any], Record], case_id_of: Callable[[Any], str],
              sink: Callable[[Record], None] | None = None, skip: Iterable[str] = (),
              progress: RunProgress | None = None, stop: Callable[[], bool] | None = None) -> list[Record]:
    """The run loop both runners share: skip finished ids, tell `progress`, measure, hand each
    record to `sink` as soon as it exists; after each case, end early when `stop()` says so."""
    pin_determinism()
    skip = set(skip)
    records: list[Record] = []
    total = len(cases)
    for index, case in enumerate(cases, start=1):
        if skip and case_id_of(case) in skip:
            continue
        if progress:
            progress.case_started(index, total, case)
        record = measure(case)
        if sink:
            sink(record)
        records.append(record)
        if progress:
            progress.case_finished(index, total, case, record)
        if stop is not None and stop():
            break
    return records


def default_optimizer_label(workload: Workload) -> str:
    """The workload's optimizer label (part of every case id), from an optimizer built over a
    one-weight stand-in model, or over the workload's own model on the meta device when the
    factory refuses the stand-in; `WorkloadError` (one line) when it refuses both."""
    try:
        return optimizer_label(workload.optimizer_for(torch.nn.Linear(1, 1, bias=False)))
    except Exception:  # a factory may expect the workload's parameters (groups by name, a count)
        pass
    try:
        with torch.device("meta"):  # the real model's parameters, without allocating them
            model = workload.build_model()
        return optimizer_label(workload.optimizer_for(model))
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise WorkloadError(f"workload {workload.name}: its optimizer cannot be built: {reason}") from exc
