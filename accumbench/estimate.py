"""Estimate many cases in seconds: profile a few, repeat or replay the allocation logs for the rest.

Every case could go through `Runner(torch.device("cpu"), meter=EstimateMeter(...)).measure`,
but a fake GPT-2 step costs about a second on a small CPU, and a suite has dozens of cases.
Cases that differ only in micro-batch size and in N >= 2 form a group (`group_key`), profiled on
one model built and warmed up at the group's largest micro-batch. Two shortcuts spare most of
the group's steps; each is taken only where what it rests on was checked for that case:

- Repeat: micro-steps 3..N of an accumulated step start from the same live tensors as
  micro-step 2 (parameters, optimizer state, the gradients summed so far, updated in place), so
  when they run the same ops on the same sizes they allocate and free exactly as micro-step 2
  does, and the peak of any N >= 2 is the peak of N = 2: such a case is profiled with
  min(N, 2) micro-batches (its record keeps its own N, effective batch and case id; FLOPs are
  scaled by N). Checked first: every case's host micro-batches are made as the runner makes
  them and their shapes compared (`batch_shapes`), and a case whose micro-batches differ in
  shape (padded to each batch's longest sequence) is profiled with all N micro-steps. Equal
  shapes are not enough when the batch's values decide sizes (`nonzero` or a mask on the
  batch, ctc_loss's target lengths, a value read with `.item()`): the profile tells
  (`KnownValues.batch_decided`), and then every case with N > 2 is profiled in full too.
- Replay: where every storage the step allocates is constant or proportional to the
  micro-batch, the log at one size gives the log at any other. The group is profiled at its
  smallest and largest micro-batch; a size in between is replayed from the two logs when they
  have the same events and every size is constant or exactly proportional, and its
  micro-batches are the smallest size's with the sizes scaled the same way (`BatchShape`: the
  numbers in a batch's tensors are constant or proportional between the two ends, and take the
  values that gives at this size); never when the batch's values decide sizes. Otherwise it is
  profiled. What it assumes, that a size in between runs the ops the two ends ran, is checked
  at the middle one of those sizes, which is profiled and must equal its replay (a model that
  pads the batch to a multiple of 8 rows fails it); what stays assumed is that the others run
  as the ends and the middle do.

Neither shortcut is taken, and each case is estimated on its own as a run is (seeded, built,
stepped), when random draws or the model's buffers decide a size or a value read on the host
(`KnownValues.state_decided`: blocks skipped with `torch.rand`, a regulariser every 5th forward
that a buffer counts): such a step differs from one micro-step, and one step, to the next. So
too when the sizes profiled give gradients to different parameters (a head only large
micro-batches use): a run at a smaller size makes no optimizer state for the others, which the
group's model, warmed up at its largest size, holds.

A size profiled on the model another size warmed up must start from what lives between steps
in a run at that size. With `zero_grad(set_to_none=False)` the gradients live on, laid out by
the run's first backward, and that layout depends on the micro-batch (AccumulateGrad may keep a
gradient that is a view into a larger one), so each other size gets its gradients reset and
one warm-up step that is not reported. A step that leaves other tensors between steps than it
found (a module keeping a tensor of the batch's size) is profiled once more at its size.

Each record says how it was obtained (`assumptions.applied`): "replayed from micro-batches A
and B", "profiled, not replayed: <why>", "profiled in full, all N micro-steps: <why>",
"accumulation: 2 micro-steps profiled, ...". The warm-up step (first-step peak) is profiled once,
at the group's largest micro-batch with min(N, 2) micro-steps; the cases of that size it stands
for report it, the others (other sizes, cases profiled in full) report none.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils._pytree import tree_flatten

from accumbench.cases import Case
from accumbench.estimate_assumptions import DeviceAssumptions
from accumbench.meters.base import live_tensors
from accumbench.meters.estimate import EstimateMeter, StepProfile, estimate_measurement
from accumbench.records import Record
from accumbench.levers import Levers
from accumbench.runner import DEFAULT_SEED, PreparedCase, Runner, prepare_case, recorded_options
from accumbench.scenarios import TrainingState, loss_weights
from accumbench.textfmt import format_bytes
from accumbench.timeline import Timeline

MAX_MICRO_STEPS = 2  # micro-steps 3..N repeat micro-step 2 where checked (see the module docstring)


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
    records: list[Record] | None
    try:
        with meter.case_context():
            profiled, graded_alike = _profile_group(runner, workload, cases)
            # Assumed routing decided sizes (each case states both bounds), random draws or the
            # model's state did, or some size leaves parameters without gradients that others
            # give them (its run would have no optimizer state for them): each case on its own.
            if meter.routing_read or meter.state_decided or not graded_alike:
                records = None
            else:
                records = [record for record, _ in profiled]
                if on_profile:
                    for case, (_, steady) in zip(cases, profiled):
                        on_profile(case, steady)
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


def _profile_group(runner: Runner, workload, cases: Sequence[Case]) -> tuple[list[tuple[Record, StepProfile]], bool]:
    """Each case's record and steady-step profile: profiled, repeated or replayed (see the
    module docstring), on one model built at the group's largest micro-batch; and whether every
    profiled step gave gradients to the same parameters (else the optimizer state the largest
    micro-batch made is not what a run at another size has)."""
    meter = runner.meter
    micro_steps = min(cases[0].accum_steps, MAX_MICRO_STEPS)
    shapes = batch_shapes(workload, cases, runner.seed)
    high = max(shapes)
    probe = dataclasses.replace(cases[0], micro_batch=high, accum_steps=micro_steps)
    prepared = prepare_case(probe, workload, runner.device, runner.seed, meter=meter)
    state = prepared.state
    first = meter.profile(prepared.step, state)
    steady: dict[tuple[int, int], StepProfile] = {(high, micro_steps): meter.profile(prepared.step, state)}
    graded = {meter.graded}
    growth = meter.growth_note()

    def profile(size: int, steps: int) -> StepProfile:
        """The steady step at `size` with `steps` micro-batches, from the state a run of that
        case has (profiled once per size and count)."""
        if (size, steps) not in steady:
            again = _batches_of(probe, size, workload, state, runner.seed, steps)
            if not probe.set_to_none:
                # zero_grad(set_to_none=False) keeps the gradients between steps as the first
                # backward of a run laid them out, and that depends on the micro-batch
                # (AccumulateGrad may keep an incoming gradient that is a view into a larger
                # one): lay them out afresh at this size, in a warm-up step that is not reported.
                for parameter in state.model.parameters():
                    parameter.grad = None
                meter.profile(again.step, state)
            before = _between_steps(state)
            steady[(size, steps)] = meter.profile(again.step, state)
            graded.add(meter.graded)
            if _between_steps(state) != before:
                # The step left other tensors between steps than it found (a module keeping a
                # tensor of the batch's size): a run at this size starts from what it left.
                steady[(size, steps)] = meter.profile(again.step, state)
        return steady[(size, steps)]

    def uniform(size: int, steps: int) -> bool:
        """Whether the first `steps` micro-batches of this size have one shape."""
        return all(shape == shapes[size][0] for shape in shapes[size][1:steps])

    def steps_for(case: Case) -> int:
        """Micro-steps to profile: all of them where micro-steps 3..N may not repeat micro-step 2."""
        if case.accum_steps <= micro_steps:
            return micro_steps
        if meter.batch_decided or not uniform(case.micro_batch, case.accum_steps):
            return case.accum_steps
        return micro_steps

    while True:  # at most twice: once more when a profile finds that the batch's values decide sizes
        decided = meter.batch_decided
        keys = {case: (case.micro_batch, steps_for(case)) for case in cases}
        regular = sorted({size for size, steps in keys.values() if steps == micro_steps})
        replayed: dict[int, StepProfile] = {}
        unreplayed: dict[int, str] = {}
        if regular:
            low, top = regular[0], regular[-1]
            profile(low, micro_steps)
            profile(top, micro_steps)
            if len(regular) > 2:
                rule, why = _replay_rule(shapes, low, top, micro_steps, decided, uniform)
                scale = None
                if rule is not None:
                    scale = proportional(steady[(low, micro_steps)], low, steady[(top, micro_steps)], top)
                    if scale is None:
                        why = f"the logs at micro-batches {low} and {top} are not constant or proportional"
                check = None
                candidates = [size for size in regular[1:-1]
                              if scale is not None and uniform(size, micro_steps) and shapes[size][0] == rule(size)]
                if candidates:
                    # What replay assumes, that a size in between runs the ops the two ends ran,
                    # is checked at one of them (a model that pads the batch to a multiple of 8
                    # runs 16 rows at 12): the middle one is profiled, and must be its replay.
                    check = candidates[len(candidates) // 2]
                    checked, expected = profile(check, micro_steps), scale(check)
                    if (checked.shape(), checked.sizes()) != (expected.shape(), expected.sizes()):
                        scale, why = None, (f"the log profiled at micro-batch {check} is not the one replayed "
                                            f"from micro-batches {low} and {top}")
                for size in regular[1:-1]:
                    if scale is not None and size in candidates and size != check:
                        replayed[size] = scale(size)
                        continue
                    if scale is not None and size == check:
                        unreplayed[size] = f"profiled (checks the replay of the sizes between {low} and {top})"
                    else:
                        unreplayed[size] = why or (
                            "its micro-batches differ in shape" if not uniform(size, micro_steps)
                            else f"its micro-batches are not those of micro-batch {low} scaled to it")
                    profile(size, micro_steps)
        for size, steps in set(keys.values()):
            if steps != micro_steps:
                profile(size, steps)
        if meter.batch_decided == decided:
            break

    results = []
    for case in cases:
        size, steps = keys[case]
        notes = []
        if steps == micro_steps and size in replayed:
            profile_ = replayed[size]
            notes.append(f"replayed from micro-batches {regular[0]} and {regular[-1]}")
        else:
            profile_ = steady[(size, steps)]
            if steps == micro_steps and size in unreplayed:
                why = unreplayed[size]
                notes.append(why if why.startswith("profiled") else f"profiled, not replayed: {why}")
        if steps != micro_steps:
            why = ("its micro-batches differ in shape" if not uniform(size, steps)
                   else f"sizes depend on the batch's values ({meter.batch_decided})")
            notes.append(f"profiled in full, all {steps} micro-steps: {why}")
        elif case.accum_steps > micro_steps:
            notes.append(f"accumulation: {micro_steps} micro-steps profiled, micro-steps 3..{case.accum_steps} "
                         "repeat micro-step 2")
        if size == high and steps == micro_steps:
            case_first = first
        else:
            case_first = None
            notes.append("first-step peak: profiled at the group's largest micro-batch only" if size != high else
                         f"first-step peak: profiled with the group's first {micro_steps} micro-batches only")
        if growth:
            notes.append(growth)
        results.append((_record(runner, case, workload, state, profile_, case_first, steps, notes), profile_))
    return results, len(graded) == 1


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """What of a host micro-batch decides a step's sizes: its tree and each leaf's kind
    (`kinds`), and the numbers in it (`numbers`: each tensor's sizes, and its strides when it
    is not contiguous, integer leaves), among them the batch dimension."""

    kinds: tuple
    numbers: tuple[int, ...]


def batch_shape(batch: Any) -> BatchShape:
    """The `BatchShape` of one host micro-batch. Tensors (and arrays) count by dtype and sizes,
    integers as numbers, other plain values (str, float, bool, None) by value, any other
    object by its type only."""
    leaves, spec = tree_flatten(batch)
    kinds: list = [spec]
    numbers: list[int] = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            contiguous = leaf.is_contiguous()
            kinds.append(("tensor", leaf.dtype, leaf.dim(), contiguous))
            numbers += [*leaf.shape, *(() if contiguous else leaf.stride())]
        elif isinstance(leaf, int) and not isinstance(leaf, bool):
            kinds.append(("int",))
            numbers.append(leaf)
        elif leaf is None or isinstance(leaf, (bool, float, complex, str, bytes)):
            kinds.append(("value", leaf))
        elif hasattr(leaf, "shape") and hasattr(leaf, "dtype"):  # a NumPy array
            kinds.append(("array", str(leaf.dtype), len(leaf.shape)))
            numbers += [int(n) for n in leaf.shape]
        else:
            kinds.append(("object", type(leaf).__qualname__))
    return BatchShape(tuple(kinds), tuple(numbers))


def batch_shapes(workload, cases: Sequence[Case], seed: int) -> dict[int, list[BatchShape]]:
    """For each micro-batch size of the cases, the shapes of the host micro-batches the runner
    makes for the case of that size with the most micro-steps (the others step on the first N
    of them): made the same way (`prepare_case`: one generator seeded with `seed`), one at a
    time and dropped once its shape is taken."""
    most: dict[int, int] = {}
    for case in cases:
        most[case.micro_batch] = max(most.get(case.micro_batch, 0), case.accum_steps)
    shapes = {}
    for size, count in sorted(most.items()):
        generator = torch.Generator().manual_seed(seed)
        shapes[size] = [batch_shape(workload.make_batch(size, generator)) for _ in range(count)]
    return shapes


def _replay_rule(shapes: dict[int, list[BatchShape]], low: int, high: int, micro_steps: int,
                 decided: str | None, uniform: Callable[[int, int], bool]
                 ) -> tuple[Callable[[int], BatchShape] | None, str | None]:
    """A function giving the `BatchShape` of a micro-batch of any size, when the micro-batches
    at `low` and `high` have one shape whose numbers are each constant or proportional to the
    micro-batch; else None and why not."""
    if decided:
        return None, f"sizes depend on the batch's values ({decided})"
    if not (uniform(low, micro_steps) and uniform(high, micro_steps)):
        odd = low if not uniform(low, micro_steps) else high
        return None, f"the micro-batches of micro-batch {odd} differ in shape"
    a, b = shapes[low][0], shapes[high][0]
    per_sample: list[tuple[int, bool]] = []
    if a.kinds == b.kinds and len(a.numbers) == len(b.numbers):
        for x, y in zip(a.numbers, b.numbers):
            if x == y:
                per_sample.append((x, False))
            elif x * high == y * low and y % high == 0:
                per_sample.append((y // high, True))
            else:
                break
        else:
            return (lambda size: BatchShape(a.kinds, tuple(k * size if scaled else k for k, scaled in per_sample)),
                    None)
    return None, f"micro-batches {low} and {high} differ in more than their batch dimension"


def _between_steps(state: TrainingState) -> dict[str, list[tuple]]:
    """Sizes and storage bytes of the tensors alive between steps, by category."""
    return {category: sorted((tuple(t.shape), t.untyped_storage().nbytes()) for t in tensors)
            for category, tensors in live_tensors(state).items()}


def _batches_of(probe: Case, micro_batch: int, workload, state: TrainingState, seed: int,
                accum_steps: int | None = None) -> PreparedCase:
    """The probe's step on micro-batches of another size (and count), over the same (warmed-up)
    state: the first micro-batches the runner makes for a case of that size."""
    generator = torch.Generator().manual_seed(seed)
    host = [workload.make_batch(micro_batch, generator) for _ in range(accum_steps or probe.accum_steps)]
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
            first: StepProfile | None, micro_steps: int, notes: Sequence[str]) -> Record:
    """The record of a case from its steady profile (of `micro_steps` micro-steps), its
    warm-up profile when that was this case's, and the notes that say how it was obtained."""
    measurement = estimate_measurement(steady, runner.meter.assumptions, first, "; ".join(notes) or None,
                                       accum_steps=case.accum_steps)
    flops = steady.flops * case.accum_steps // micro_steps
    return runner.ok_record(case, workload, state, dataclasses.replace(measurement, warmup_steps=1, measured_steps=1),
                            flops)


def predicted_oom(record: Record, assumptions: DeviceAssumptions) -> Record:
    """An ok estimate whose peak exceeds the device's usable memory becomes status `oom`
    (keeping the predicted peak); anything else is returned as is."""
    usable = assumptions.usable_memory_bytes
    if record.status != "ok" or usable is None or record.peak_allocated is None or record.peak_allocated <= usable:
        return record
    return dataclasses.replace(
        record, status="oom",
        error=(f"predicted peak {format_bytes(record.peak_allocated)} exceeds the {assumptions.label}'s "
               f"usable {format_bytes(usable)} (total {format_bytes(assumptions.total_memory_bytes)} "
               f"less a {format_bytes(assumptions.reserve_bytes)} reserve)"),
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
        """Seed, meter, predicted device, torch version and the device kind's assumptions (as
        `--assume` set them): what every estimate record carries."""
        return {**self.runner.shared_settings(), "assumptions": self.assumptions.describe()}

    def case_settings(self, case: Case) -> dict:
        """The workload factory's options given: an estimate profiles one warm-up and one steady
        step, whatever the case asks."""
        return {"workload_options": recorded_options(case, self.runner.workload(case))}

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


__all__ = ["MAX_MICRO_STEPS", "BatchShape", "EstimateRunner", "batch_shape", "batch_shapes", "estimate_cases",
           "estimate_each", "estimate_group", "estimate_runner", "group_key", "groups_of", "predicted_oom",
           "proportional"]
