"""Estimate many cases in seconds: profile a few, replay the allocation logs for the rest.

Every case could go through `Runner(torch.device("cpu"), meter=EstimateMeter(...)).measure`,
but a fake GPT-2 step costs about a second on a small CPU, and a suite has dozens of cases.
Two facts make most of them redundant, and both are checked, not assumed:

- Micro-steps 3..N of an accumulated step start from the same live tensors as micro-step 2
  (parameters, optimizer state, the gradients summed so far, updated in place) and run the same
  ops on same-shaped batches, so they allocate and free exactly as micro-step 2 does: the peak of
  any N >= 2 is the peak of N = 2. Cases are estimated with min(N, 2) micro-batches (their
  records keep their own N, effective batch and case id; FLOPs are scaled by N).
- Within a group (same workload, scenario, knobs, micro-step count) every storage the step
  allocates is either independent of the micro-batch or proportional to it. The group is
  profiled at its largest and smallest micro-batch on one model; when the two logs have the
  same events and every size is constant or exactly proportional, the log is replayed at the
  other sizes (exact by construction); otherwise each size is profiled.

The warm-up step (first-step peak) is profiled at the group's largest micro-batch only; other
sizes of the group report no first-step peak.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import torch

from accumbench.cases import Case
from accumbench.estimate_assumptions import DeviceAssumptions
from accumbench.meters.estimate import EstimateMeter, StepProfile, estimate_measurement
from accumbench.records import Record
from accumbench.levers import Levers
from accumbench.runner import DEFAULT_SEED, PreparedCase, Runner, prepare_case
from accumbench.scenarios import TrainingState, loss_weights
from accumbench.timeline import Timeline

MAX_MICRO_STEPS = 2  # micro-steps 3..N repeat micro-step 2 exactly (see the module docstring)


def estimate_runner(assumptions: DeviceAssumptions, seed: int = DEFAULT_SEED, run_id: str | None = None,
                    timeline_sink: Callable[[Record, Timeline], str] | None = None) -> Runner:
    """A runner that estimates on fake CPU tensors for the given device assumptions
    (with `timeline_sink`, each case's fake step is also traced; see `Runner`)."""
    return Runner(torch.device("cpu"), meter=EstimateMeter(assumptions), seed=seed, run_id=run_id,
                  timeline_sink=timeline_sink)


def estimate_each(cases: Sequence[Case], runner: Runner, assumptions: DeviceAssumptions,
                  on_record: Callable[[Record], None] | None = None) -> list[Record]:
    """One case at a time through the runner, no grouped replay: slower, but every case runs
    its own fake steps, which a timeline needs."""
    records = []
    for case in cases:
        record = predicted_oom(runner.measure(case), assumptions)
        if on_record:
            on_record(record)
        records.append(record)
    return records


def group_key(case: Case) -> tuple:
    """Cases that differ only in micro-batch size and in N >= 2 share one group."""
    return (case.workload, case.options, case.scenario, min(case.accum_steps, MAX_MICRO_STEPS),
            case.amp, case.set_to_none, case.loss_norm, Levers.of(case))


def estimate_cases(cases: Sequence[Case], assumptions: DeviceAssumptions, *, seed: int = DEFAULT_SEED,
                   run_id: str | None = None, runner: Runner | None = None,
                   on_record: Callable[[Record], None] | None = None,
                   on_profile: Callable[[Case, StepProfile], None] | None = None) -> list[Record]:
    """One estimate record per case, in the order of `cases`; `on_record` sees each record as
    soon as its group is done, `on_profile` each case's steady-step profile (its op table is
    what `benchmarks/steptime_validation.py` refits the speed constants on). A case that fails is an `error` record; a predicted peak above
    the device's usable memory is an `oom` record that keeps the predicted peak."""
    runner = runner or estimate_runner(assumptions, seed, run_id)
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(group_key(case), []).append(case)
    results: dict[Case, Record] = {}
    for group in groups.values():
        for case, record in zip(group, estimate_group(runner, group, on_profile)):
            record = predicted_oom(record, assumptions)
            results[case] = record
            if on_record:
                on_record(record)
    return [results[case] for case in cases]


def estimate_group(runner: Runner, cases: Sequence[Case],
                   on_profile: Callable[[Case, StepProfile], None] | None = None) -> list[Record]:
    """Records for cases of one group (see `group_key`), profiled as the module docstring says."""
    meter = runner.meter
    if not isinstance(meter, EstimateMeter):
        raise TypeError("estimate_group needs a runner with an EstimateMeter")
    if cases[0].compile:  # refused: the runner records why (accumbench.levers.ESTIMATE_REFUSES_COMPILE)
        return [runner.measure(case) for case in cases]
    workload = runner.workload(cases[0])
    sizes = sorted({c.micro_batch for c in cases})
    micro_steps = min(cases[0].accum_steps, MAX_MICRO_STEPS)
    probe = dataclasses.replace(cases[0], micro_batch=sizes[-1], accum_steps=micro_steps)
    try:
        with meter.case_context():
            prepared = prepare_case(probe, workload, runner.device, runner.seed, meter=meter)
            state = prepared.state
            first = meter.profile(prepared.step, state)
            steady: dict[int, StepProfile] = {sizes[-1]: meter.profile(prepared.step, state)}
            notes: dict[int, str] = {}
            if len(sizes) > 1:
                low, high = sizes[0], sizes[-1]
                steady[low] = meter.profile(_batches_of(probe, low, workload, state, runner.seed).step, state)
                scale = proportional(steady[low], low, steady[high], high)
                for size in sizes[1:-1]:
                    if scale is not None:
                        steady[size] = scale(size)
                        notes[size] = f"replayed from micro-batches {low} and {high}"
                    else:
                        steady[size] = meter.profile(_batches_of(probe, size, workload, state, runner.seed).step, state)
            records = [_record(runner, case, workload, state, steady[case.micro_batch],
                               first if case.micro_batch == sizes[-1] else None,
                               micro_steps, notes.get(case.micro_batch)) for case in cases]
            if meter.routing_read:  # the peak depends on assumed routing: each case states both bounds
                records = None
            elif on_profile:
                for case in cases:
                    on_profile(case, steady[case.micro_batch])
    except KeyboardInterrupt:
        raise
    except Exception:
        records = None
    finally:
        meter.release(runner.device)
    if records is None:
        # Let the runner estimate each case on its own: it turns a failure into an error record.
        records = []
        for case in cases:
            records.append(runner.measure(case))
            if on_profile and meter.last_profiles is not None and records[-1].status == "ok":
                on_profile(case, meter.last_profiles[1])
    return records


def _batches_of(probe: Case, micro_batch: int, workload, state: TrainingState, seed: int) -> PreparedCase:
    """The probe's step on micro-batches of another size, over the same (warmed-up) state."""
    generator = torch.Generator().manual_seed(seed)
    host = [workload.make_batch(micro_batch, generator) for _ in range(probe.accum_steps)]
    return PreparedCase(probe.scenario, workload, state, host, loss_weights(workload, host, probe.loss_norm))


def proportional(low: StepProfile, low_size: int, high: StepProfile, high_size: int
                 ) -> Callable[[int], StepProfile] | None:
    """When two logs differ only in sizes that are constant or exactly proportional to the
    micro-batch, a function giving the log at any micro-batch; else None."""
    if low_size == high_size or low.shape() != high.shape():
        return None
    per_sample: list[tuple[int, bool]] = []
    for a, b in zip(low.sizes(), high.sizes()):
        if a == b:
            per_sample.append((a, False))
        elif a * high_size == b * low_size and b % high_size == 0:
            per_sample.append((b // high_size, True))
        else:
            return None

    def at(size: int) -> StepProfile:
        sizes = [k * size if scaled else k for k, scaled in per_sample]
        # Counted FLOPs (matmuls, convolutions, attention) interpolate linearly in the batch,
        # and so do each op's FLOPs and bytes (the same ops ran at both sizes).
        flops = low.flops + (high.flops - low.flops) * (size - low_size) // (high_size - low_size)
        ops = None
        if low.ops is not None and high.ops is not None and low.ops.same_ops(high.ops):
            ops = low.ops.interpolate(low_size, high.ops, high_size, size)
        return high.with_sizes(sizes, flops, ops)

    return at


def _record(runner: Runner, case: Case, workload, state: TrainingState, steady: StepProfile,
            first: StepProfile | None, micro_steps: int, note: str | None) -> Record:
    notes = [n for n in (note,) if n]
    if case.accum_steps > micro_steps:
        notes.append(f"accumulation: {micro_steps} micro-steps profiled, micro-steps 3..{case.accum_steps} "
                     "repeat micro-step 2")
    if first is None:
        notes.append("first-step peak: profiled at the group's largest micro-batch only")
    measurement = estimate_measurement(steady, runner.meter.assumptions, first, "; ".join(notes) or None,
                                       accum_steps=case.accum_steps)
    flops = steady.flops * case.accum_steps // micro_steps
    record = runner.ok_record(case, workload, state, measurement, flops)
    return dataclasses.replace(record, warmup_steps=1, measured_steps=1, steps_setting="1")


def predicted_oom(record: Record, assumptions: DeviceAssumptions) -> Record:
    """An ok estimate whose peak exceeds the device's usable memory becomes status `oom`
    (keeping the predicted peak); anything else is returned as is."""
    usable = assumptions.usable_memory_bytes
    if record.status != "ok" or usable is None or record.peak_allocated is None or record.peak_allocated <= usable:
        return record
    return dataclasses.replace(
        record, status="oom",
        error=(f"predicted peak {record.peak_allocated / 2**30:.2f} GiB exceeds the {assumptions.label}'s "
               f"usable {usable / 2**30:.2f} GiB (total {assumptions.total_memory_bytes / 2**30:.2f} GiB "
               f"less a {assumptions.reserve_bytes / 2**30:.2f} GiB reserve)"),
    )


class _Stopped(Exception):
    """Raised from `on_record` to end an estimate early (the session's `stop`)."""


class EstimateRunner:
    """The estimate as a runner `session.execute` can drive: grouped replay (`estimate_cases`),
    or one case at a time (`estimate_each`, for timelines), with each record handed to the sink
    as soon as its group is done."""

    is_writer = True

    def __init__(self, runner: Runner, assumptions: DeviceAssumptions, each: bool = False) -> None:
        self.runner = runner
        self.assumptions = assumptions
        self.each = each

    def share(self, value):
        """One process: the value itself."""
        return value

    def case_id(self, case: Case) -> str:
        """The id the case's record will carry."""
        return self.runner.case_id(case)

    def shared_settings(self) -> dict:
        """Seed, meter, predicted device and torch version: what every estimate record carries."""
        return self.runner.shared_settings()

    def case_settings(self, case: Case) -> dict:
        """Nothing per case: an estimate profiles one warm-up and one steady step, whatever the
        case asks."""
        return {}

    def run(self, cases: Sequence[Case], sink: Callable[[Record], None] | None = None, skip: Iterable[str] = (),
            progress=None, stop: Callable[[], bool] | None = None) -> list[Record]:
        """Estimate the cases not in `skip`; tell `progress` and `sink` as each record comes."""
        skip = set(skip)
        todo = [c for c in cases if self.case_id(c) not in skip]
        position = {self.case_id(c): (i, c) for i, c in enumerate(todo, start=1)}
        records: list[Record] = []

        def on_record(record: Record) -> None:
            index, case = position[record.case_id]
            if progress:
                progress.case_started(index, len(todo), case)
            if sink:
                sink(record)
            records.append(record)
            if progress:
                progress.case_finished(index, len(todo), case, record)
            if stop is not None and stop():
                raise _Stopped

        try:
            if self.each:
                estimate_each(todo, self.runner, self.assumptions, on_record=on_record)
            else:
                estimate_cases(todo, self.assumptions, runner=self.runner, on_record=on_record)
        except _Stopped:
            pass
        return records


def groups_of(cases: Iterable[Case]) -> int:
    """How many groups (profiled model builds) the cases need."""
    return len({group_key(c) for c in cases})


__all__ = ["MAX_MICRO_STEPS", "EstimateRunner", "estimate_cases", "estimate_each", "estimate_group", "estimate_runner", "group_key",
           "groups_of", "predicted_oom", "proportional"]
