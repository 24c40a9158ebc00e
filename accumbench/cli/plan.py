"""`accumbench plan`: recommend micro-batch x accumulation steps for an effective batch and a budget."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from accumbench.cases import MAX_EFFECTIVE_BATCH
from accumbench.cli.common import fail_input, lever_options, lever_settings, workload_options
from accumbench.cli.estimate import DEVICE_KINDS, device_assumptions


def _fraction(text: str) -> float:
    """'10%' or '0.1' -> 0.1; exit 2 otherwise."""
    try:
        value = float(text[:-1]) / 100 if text.strip().endswith("%") else float(text)
    except ValueError:
        fail_input(f"--margin takes a percentage like 10% or a fraction like 0.1, got {text!r}")
    if not 0.0 <= value < 1.0:
        fail_input(f"--margin must be at least 0% and below 100%, got {text!r}")
    return value


@click.command()
@click.option("--effective-batch", type=click.IntRange(min=1, max=MAX_EFFECTIVE_BATCH), required=True,
              help="Samples per optimizer step (micro-batch x accumulation steps), at most 2**31 - 1.")
@click.option("--memory-budget", required=True, metavar="SIZE",
              help="Device memory you can use: 24GiB (binary), 24GB (decimal), 80e9 or plain bytes.")
@click.option("--workload", "workload_spec", default=None,
              help="Workload to plan for (built-in, hf:<model> or plug-in spec). Without --results, estimated "
                   "on the spot.")
@click.option("--workload-opt", "workload_opts", multiple=True, metavar="KEY=VALUE",
              help="Option for the workload factory, repeatable, e.g. size=gpt2.")
@click.option("--results", "results", multiple=True, type=click.Path(path_type=Path),
              help="Measured (or estimated) results JSONL, repeatable; the plan fits and uses them "
                   "instead of estimating.")
@click.option("--scenario", type=click.Choice(["multitask-combined", "multitask-sequential"]), default=None,
              help="For a multi-task workload: which step to plan (default multitask-combined). Single-loss "
                   "workloads plan large-batch (accumulation 1) and accumulated.")
@click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default=None,
              help="Autocast dtype (estimates default to none; with --results, selects those records).")
@click.option("--set-to-none/--zero-grads", "set_to_none", default=None, help="zero_grad(set_to_none=...) as for run.")
@click.option("--loss-norm", type=click.Choice(["mean", "token"]), default=None, help="As for run.")
@click.option("--margin", default="10%", show_default=True,
              help="Safety margin kept free of the budget: a candidate fits when its predicted peak "
                   "is at most budget x (1 - margin).")
@click.option("--device-kind", type=click.Choice(DEVICE_KINDS), default="h100", show_default=True,
              help="Device the estimates are for (without --results).")
@click.option("--assume", "assume", multiple=True, metavar="KEY=VALUE",
              help="Override an estimate assumption (see accumbench estimate --help).")
@click.option("--world-size", type=click.IntRange(min=1), default=1, show_default=True, metavar="W",
              help="GPUs the effective batch is spread over, sharded with FSDP2 (as run --parallel fsdp): "
                   "micro-batch x steps are per rank, memory is rank 0's (estimated on a fake process group "
                   "with the gradient sync skipped until the last micro-step, or --results of world size W).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the plan as JSON (the lever exploration under \"levers\", when there is one).")
@lever_options()
def plan(effective_batch, memory_budget, workload_spec, workload_opts, results, scenario, amp, set_to_none,
         loss_norm, margin, device_kind, assume, as_json, world_size=1) -> None:
    """Recommend micro-batch x accumulation steps for an effective batch under a memory budget.

    Lists every (micro-batch, accumulation steps) pair whose product is --effective-batch,
    fastest first, with its predicted peak and samples/s, marks those that fit the budget less
    the margin, recommends the fastest that fits and says what each other fitting pair costs
    ("8x32: 5.73 GiB (estimated), ~281 samples/s (estimated), 2.2x slower than 32x8 (1.34-3.68x)"). Every
    number says where it comes from: measured, estimated (the estimate meter's prediction),
    fit (a line through peak vs micro-batch), "from mb=1 x16" (samples/s borrowed from the same
    micro-batch at another accumulation count), or nothing when unknown. Predictions come from
    --results (a measured OOM rules out that micro-batch and larger), or else from estimates
    made on the spot for --workload (peaks and step times, see accumbench estimate). With no
    throughput at all it recommends the largest micro-batch that fits. It never recommends a
    configuration that does not fit by its own prediction. Estimated on the spot (one process),
    it also plans with activation checkpointing (--checkpoint blocks, or the --checkpoint
    given) and without, says what checkpointing saves and costs, and which is best; also when
    nothing fits as asked, to say whether checkpointing would make something fit. With
    --results the lever flags choose the records measured with those levers (eager without
    them): a checkpointed record is another configuration than its eager twin; when the
    results also hold the twins, the same comparison is made from them.

    \b
    Examples:
      accumbench plan --workload gpt --workload-opt size=gpt2 --amp bf16 \\
          --effective-batch 256 --memory-budget 24GiB
      accumbench plan --results results/h100.jsonl --workload gpt --workload-opt size=gpt2 \\
          --amp bf16 --effective-batch 256 --memory-budget 40GB --margin 5%
      accumbench plan --workload gpt --workload-opt size=gpt2 --amp bf16 \\
          --effective-batch 256 --memory-budget 24GiB --world-size 8   # 32 per GPU, FSDP

    Exit codes: 0 a configuration fits, 1 none fits the budget (with the levers as given),
    2 bad input.
    """
    from accumbench.estimate_assumptions import parse_size
    from accumbench.plan import NothingFits, PlanError, format_plan, make_plan, observations_from_records, plan_to_dict
    from accumbench.workloads import WorkloadError, load_workload

    try:
        budget = parse_size(memory_budget)
    except ValueError as exc:
        fail_input(f"--memory-budget: {exc}")
    if budget <= 0:
        fail_input(f"--memory-budget must be at least 1 byte, got {memory_budget!r}")
    margin_value = _fraction(margin)
    if results:
        speed_error = _check_results_flags(assume)
    else:
        _note_budget_beyond_device(budget, device_assumptions(device_kind, assume))
    if not results and lever_settings().get("compile"):
        # Without --results every candidate is estimated, and the estimate refuses --compile:
        # say so now (exit 2), not after estimating each candidate in turn (exit 1).
        from accumbench.levers import ESTIMATE_REFUSES_COMPILE

        fail_input(ESTIMATE_REFUSES_COMPILE)
    options = workload_options(workload_opts)
    workload = None
    if workload_spec is not None:
        try:
            workload = load_workload(workload_spec, options)
        except WorkloadError as exc:
            fail_input(str(exc))
    if scenario is not None and workload is not None and not workload.is_multitask:
        fail_input(f"--scenario {scenario} needs a multi-task workload; {workload.name} has a single loss")
    family = scenario or ("multitask-combined" if workload is not None and workload.is_multitask else None)
    per_rank = effective_batch
    if world_size > 1:
        if effective_batch % world_size:
            fail_input(f"--effective-batch {effective_batch} does not split over --world-size {world_size} ranks")
        if family is not None:
            fail_input("--world-size plans FSDP, which runs single-loss workloads (large-batch and accumulated)")
        per_rank = effective_batch // world_size

    estimated = None  # the candidates' estimate records, when estimated here
    try:
        if results:
            observations, source, exact, name, pool = _from_results(results, workload, family, amp, set_to_none,
                                                                    loss_norm, world_size, speed_error)
        else:
            if workload is None:
                fail_input("give --workload to estimate, or --results with measured records")
            estimated = _from_estimates(workload_spec, options, per_rank, family, amp, set_to_none, loss_norm,
                                        device_kind, assume, world_size)
            observations, source, exact = (observations_from_records(estimated),
                                           f"estimates ({estimated[0].device_name})", "estimated")
            if world_size > 1 and any(r.samples_per_s for r in estimated):
                from accumbench.distributed.fake_group import COMMUNICATION_NOT_MODELLED

                source += f"; samples/s: {COMMUNICATION_NOT_MODELLED}"
            name = workload.name
        if world_size > 1:  # the plan is per rank: say so wherever it names the batch
            name += f" on {world_size} ranks (FSDP; the job's effective batch {effective_batch}; below, the " \
                    f"effective batch, micro-batch x steps and peak are one rank's, samples/s the job's)"
        made = make_plan(per_rank, budget, observations, margin_value, exact_source=exact,
                         source=source, workload=name)
    except NothingFits as exc:
        click.echo(f"no configuration fits: {exc}", err=True)
        made, unfit = None, exc.plan
    except PlanError as exc:
        fail_input(str(exc))
    else:
        unfit = None
    if not as_json and made is not None:
        click.echo(format_plan(made))
    # The lever exploration (single-process), also when nothing fits as asked: whether
    # checkpointing would make something fit is then the question. The exit code stays the
    # plan's own (1: nothing fits as asked).
    explored: list | str | None = None
    if world_size == 1:
        if not results:
            explored = _explore_checkpointing(workload_spec, options, effective_batch, family, amp, set_to_none,
                                              loss_norm, device_kind, assume, budget, margin_value, estimated,
                                              workload)
        else:
            explored = _explore_results(pool, per_rank, budget, margin_value, exact, speed_error)
    if as_json:
        from accumbench.lever_plan import exploration_to_dict

        shown = made if made is not None else unfit  # what each candidate needs, for a tool to read
        data = plan_to_dict(shown) if shown is not None else {}
        if explored is not None:
            data["levers"] = (exploration_to_dict(explored) if isinstance(explored, list)
                              else {"options": [], "recommended": None, "problem": explored})
        if data:
            click.echo(json.dumps(data, indent=2))
    elif explored is not None:
        from accumbench.lever_plan import format_exploration

        click.echo(format_exploration(explored) if isinstance(explored, list) else explored)
    if made is None:
        sys.exit(1)


def _check_results_flags(assume) -> float | None:
    """With --results the plan is for the results' device: --device-kind given on the command line
    would be silently ignored, and of --assume only the step-time model's ratio error
    (`speed_ratio_error`, which widens estimated speed ratios) still means something: exit 2
    for the others; return that error factor (None when not given)."""
    from click.core import ParameterSource

    from accumbench.estimate_assumptions import parse_overrides

    if click.get_current_context().get_parameter_source("device_kind") == ParameterSource.COMMANDLINE:
        fail_input("--device-kind chooses the device of estimates made here; with --results the plan is "
                   "for the device the results were measured (or estimated) on")
    try:
        keys = set(parse_overrides(assume))
    except ValueError as exc:
        fail_input(str(exc))
    if keys - {"speed_ratio_error"}:
        fail_input(f"--assume {sorted(keys - {'speed_ratio_error'})[0]} changes estimates made here; with --results "
                   "only --assume speed_ratio_error applies (to the results' estimated speeds)")
    # Any kind types and checks the value as the estimate would.
    return device_assumptions("h100", assume).speed_ratio_error if keys else None


def _note_budget_beyond_device(budget: int, assumptions) -> None:
    """Say when the budget is more than the device kind holds: the estimate's out-of-memory
    verdict, not the budget, then decides what fits."""
    from accumbench.textfmt import format_bytes

    usable = assumptions.usable_memory_bytes
    if usable is not None and budget > usable:
        click.echo(f"note: the budget ({format_bytes(budget)}) is more than the {assumptions.label}'s usable "
                   f"{format_bytes(usable)}; a configuration predicted above that runs out of memory and never "
                   "fits (--assume total_memory_bytes=... for a larger device)", err=True)


def _from_results(paths, workload, family, amp, set_to_none, loss_norm, world_size=1, speed_error=None):
    from accumbench.plan import observations_from_records, select_records
    from accumbench.records import RecordError, read_records

    try:
        records = read_records(list(paths))
    except RecordError as exc:
        fail_input(str(exc))
    if world_size > 1:  # that world size's FSDP records, accumulated with the sync skipped
        records = [r for r in records if r.world_size == world_size and isinstance(r.distributed, dict)
                   and r.distributed.get("parallel") == "fsdp"
                   and (r.scenario != "accumulated" or r.distributed.get("no_sync"))]
        if not records:
            fail_input(f"no FSDP records of world size {world_size} in {', '.join(str(p) for p in paths)}")
    else:  # single-process records: a rank's micro-batch and the summed samples/s of a job mean other things
        sizes = sorted({r.world_size for r in records if (r.world_size or 1) > 1})
        records = [r for r in records if (r.world_size or 1) == 1]
        if not records and sizes:
            fail_input(f"the results hold only multi-process records (world size {', '.join(map(str, sizes))}); "
                       "plan FSDP records with --world-size")
    if family is None and workload is None:
        # A results file of multi-task records only: plan its (combined) step.
        scenarios = {r.scenario for r in records}
        if scenarios and scenarios <= {"multitask-combined", "multitask-sequential"}:
            family = "multitask-combined"
    from accumbench.levers import Levers

    # Every lever setting of this workload and these knobs (the lever exploration compares them),
    # then the levers as given (eager without flags): a checkpointed twin is another configuration.
    pool = select_records(records, workload.name if workload else None, family,
                          amp=amp, set_to_none=set_to_none, loss_norm=loss_norm)
    chosen = select_records(pool, None, family, Levers(**lever_settings()))
    meter = chosen[0].meter
    source = f"{'estimates' if meter == 'estimate' else 'measured results'} on {chosen[0].device_name} " \
             f"({', '.join(str(p) for p in paths)})"
    if meter == "cpu":  # its ranking is the CPU's, as the report says of its throughput
        source += "; samples/s measured on the CPU say little about a GPU's"
    observations = observations_from_records(chosen, speed_error)  # the user's bound, when given
    return (observations, source, "estimated" if meter == "estimate" else "measured", chosen[0].workload, pool)


def _explore_results(pool, effective_batch, budget, margin, exact, speed_error=None) -> list | None:
    """From the results: the plan with checkpointing off and with the one checkpointing setting
    the records also hold (the other levers as given), side by side with what it costs, as
    `_explore_checkpointing` does from estimates; None when the results hold no such twin.
    `speed_error`: `--assume speed_ratio_error`, as the main plan takes it."""
    import dataclasses

    from accumbench.lever_plan import lever_option
    from accumbench.levers import Levers

    given = Levers(**lever_settings())
    settings = {Levers.of(r).checkpoint for r in pool
                if dataclasses.replace(Levers.of(r), checkpoint=given.checkpoint) == given} | {given.checkpoint}
    if len(settings) != 2 or "none" not in settings:
        return None
    explored = []
    for checkpoint in ("none", *sorted(settings - {"none"})):
        levers = dataclasses.replace(given, checkpoint=checkpoint)
        chosen = [r for r in pool if Levers.of(r) == levers]
        # Every record feeds the plan's memory lines; the lever's cost is told at this effective
        # batch's own configurations, as the estimates' exploration tells it.
        own = [r for r in chosen if r.micro_batch * r.accum_steps == effective_batch]
        explored.append(lever_option(levers.describe(), chosen, effective_batch, budget, margin, exact, own,
                                     speed_error))
    return explored


def _from_estimates(spec, options, effective_batch, family, amp, set_to_none, loss_norm, device_kind, assume,
                    world_size=1) -> list:
    """The estimate records of every candidate (rank 0's under FSDP); exit 2 when the levers or
    knobs do not fit the workload (checked on one case of each scenario before estimating
    anything), exit 1 when an estimate failed."""
    from accumbench.cli.common import validate_cases
    from accumbench.estimate import estimate_cases, estimate_runner
    from accumbench.plan import candidate_cases

    assumptions = device_assumptions(device_kind, assume)
    cases = candidate_cases(spec, options, effective_batch, family, amp=amp, set_to_none=set_to_none,
                            loss_norm=loss_norm, **lever_settings())
    runner = estimate_runner(assumptions)
    validate_cases(runner, list({case.scenario: case for case in cases}.values()))
    progress = _progress(f"estimating {len(cases)} candidate(s) for {assumptions.label}"
                         + (f", rank 0 of {world_size} (FSDP)" if world_size > 1 else ""), len(cases))
    if world_size > 1:
        from accumbench.distributed.fake_group import estimate_fsdp
        from accumbench.distributed.fsdp import FsdpCase

        records = estimate_fsdp([FsdpCase(c, no_sync=c.scenario == "accumulated") for c in cases],
                                assumptions, world_size, on_record=progress)
    else:
        records = estimate_cases(cases, assumptions, runner=runner, on_record=progress)
    errors = [r for r in records if r.status == "error"]
    if errors:
        click.echo(f"cannot plan: estimating {errors[0].case_id} failed: {errors[0].error}", err=True)
        sys.exit(1)
    return records


def _progress(heading: str, total: int):
    """Say `heading`, then return the callback that says each estimate as it is done (a large
    model takes seconds per candidate)."""
    from accumbench.cli.progress import record_detail

    click.echo(heading + "...", err=True)
    started, done = time.perf_counter(), []

    def progress(record) -> None:
        done.append(record)
        click.echo(f"  [{len(done)}/{total}] {record.scenario} {record.micro_batch} x {record.accum_steps}: "
                   f"{record_detail(record)} ({time.perf_counter() - started:.0f} s)", err=True)
    return progress


def _explore_checkpointing(spec, options, effective_batch, family, amp, set_to_none, loss_norm, device_kind,
                           assume, budget, margin, planned=None, workload=None) -> list | str:
    """The plan with checkpointing off and on (the other levers as given), side by side, with
    what checkpointing costs (accumbench.lever_plan). `planned`: the main plan's estimate
    records, made with the levers as given, reused for that setting rather than estimated again;
    `workload` (loaded): a checkpoint pattern it cannot resolve (no blocks) is said, not estimated."""
    from accumbench.estimate import estimate_cases
    from accumbench.lever_plan import LeverOption, lever_option
    from accumbench.levers import ESTIMATE_REFUSES_COMPILE, Levers, checkpoint_pattern
    from accumbench.plan import candidate_cases

    settings = lever_settings()
    if settings.get("compile"):
        return f"levers not explored: {ESTIMATE_REFUSES_COMPILE}"
    assumptions = device_assumptions(device_kind, assume)
    explored = []
    given = settings.get("checkpoint", "none")
    for checkpoint in ("none", given if given != "none" else "blocks"):
        levers = {**settings, "checkpoint": checkpoint}
        label = Levers(**levers).describe()
        try:
            cases = candidate_cases(spec, options, effective_batch, family, amp=amp, set_to_none=set_to_none,
                                    loss_norm=loss_norm, **levers)
            if workload is not None and checkpoint != "none":
                checkpoint_pattern(checkpoint, workload)  # LeverError before any estimate
            if planned is not None and checkpoint == given:
                records = planned
            else:
                records = estimate_cases(cases, assumptions, on_record=_progress(
                    f"estimating {len(cases)} candidate(s) with {label} to compare", len(cases)))
        except ValueError as exc:  # LeverError (the workload names no blocks), or cases that cannot be made
            explored.append(LeverOption(label, None, str(exc), ()))
            continue
        problem = next((r.error for r in records if r.status == "error"), None)
        if problem:  # an estimate failed: no plan can be made of the others
            explored.append(LeverOption(label, None, problem.splitlines()[0][:200], records))
        else:
            explored.append(lever_option(label, records, effective_batch, budget, margin, "estimated"))
    return explored
