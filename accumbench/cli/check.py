"""`accumbench check`: is accumulating N micro-batches the same as one large batch?"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from accumbench.cases import MAX_MICRO_BATCH
from accumbench.cli.common import (
    OutPath,
    SEED,
    fail_input,
    int_list,
    lever_options,
    lever_settings,
    open_results,
    workload_options,
)

# The built-ins that make the point, at their tiny size: two that accumulate exactly, one with
# BatchNorm, one with padded sequences (varying valid tokens per micro-batch).
DEFAULT_WORKLOADS: tuple[tuple[str, dict], ...] = (
    ("mlp", {}),
    ("convnet-gn", {}),
    ("convnet-bn", {}),
    ("gpt", {"padded": True}),
)


@click.command()
@click.option("--workload", "workload_specs", multiple=True, metavar="W",
              help="Repeatable. Built-in (gpt, convnet-bn, convnet-gn, mlp, two-models, shared-trunk), "
                   "hf:<model> (a transformers model from its config, e.g. hf:gpt2-tiny) or a "
                   "plug-in path/to/file.py:factory or package.module:factory. Default: mlp, convnet-gn, "
                   "convnet-bn and gpt padded=true, all tiny.")
@click.option("--workload-opt", "workload_opts", multiple=True, metavar="KEY=VALUE",
              help="Option for the workload factory (every --workload given), repeatable, e.g. padded=true.")
@click.option("--accum-steps", default="2,4,8", show_default=True,
              help="Comma-separated accumulation counts N to compare with one batch of n*N.")
@click.option("--micro-batch", type=click.IntRange(min=1, max=MAX_MICRO_BATCH), default=4, show_default=True,
              help="Samples per micro-batch n.")
@click.option("--loss-norm", type=click.Choice(["mean", "token", "both"]), default="both", show_default=True,
              help="mean: each micro-batch's mean loss / N. token: weighted by valid-token count (sum / total "
                   "tokens). both: mean, plus token where the workload counts its loss elements.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="float64 shows the method's error, not rounding (tolerance 1e-10); float32 is what training "
                   "sees (tolerance 1e-5).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for the model and the batch.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads for torch; tiny models run fastest on one.")
@click.option("--out", "out_path", type=OutPath(dir_okay=False, path_type=Path), default=None,
              help="Write one record per workload, N and loss norm to this JSONL file (scenario "
                   "'equivalence'), for `report` and `compare`.")
@click.option("--append", is_flag=True, help="Add to an existing --out file (e.g. next to `run` results).")
@click.option("--overwrite", is_flag=True,
              help="Start --out afresh; the old file is kept as FILE.bak (or FILE.bak.1, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines instead of the table.")
@click.option("--strict", is_flag=True,
              help="Exit 1 on any non-equivalent result, explained or not (CI: require your model to accumulate exactly).")
@lever_options()
def check(workload_specs, workload_opts, accum_steps, micro_batch, loss_norm, dtype, seed, threads, out_path,
          append, overwrite, as_json, strict) -> None:
    """Compare the gradients of N accumulated micro-batches with one large batch.

    For each workload and N, one seeded batch of n*N samples is split into N micro-batches;
    both gradient sets start from the same weights and run through the same scenario code as
    `accumbench run`. The table gives the relative error |g_acc - g_large| / |g_large|, the
    verdict and the cause; below it, each cause in plain words with its fix and the evidence
    (the error with the cause switched off): BatchNorm (layers named, running-statistics drift),
    a per-micro-batch mean loss over varying valid tokens, dropout or other randomness. It also
    checks the optimizer step (SGD, AdamW) and the GradScaler's accumulation window.

    \b
    Examples:
      accumbench check
      accumbench check --workload gpt --workload-opt padded=true --loss-norm both
      accumbench check --workload hf:gpt2-tiny --workload-opt padded=true   # HF's num_items_in_batch
      accumbench check --workload my_model.py:build --dtype float32 --strict
      accumbench check --out results/check.jsonl && accumbench report results/check.jsonl

    Exit codes: 0 every result equivalent, or not equivalent for a diagnosed cause; 1 a result
    not equivalent with no known cause, a workload that failed, or (--strict) any result not
    equivalent; 2 bad input.
    """
    from accumbench.equivalence import CheckConfig, loss_norms_for
    from accumbench.results_file import ResultsFileError
    from accumbench.workloads import WorkloadError, load_workload

    options = workload_options(workload_opts)
    if workload_specs:
        targets = [(spec, options) for spec in workload_specs]
    else:
        if options:
            fail_input("--workload-opt needs --workload (the default workloads take their own options)")
        targets = list(DEFAULT_WORKLOADS)
    config = CheckConfig(accum_steps=tuple(int_list(accum_steps, "--accum-steps")), micro_batch=micro_batch,
                         loss_norm=loss_norm, dtype=dtype, seed=seed)
    if out_path is None and (append or overwrite):
        fail_input("--append and --overwrite need --out")
    results = None if out_path is None else open_results(
        out_path, "accumbench check", append=append, overwrite=overwrite, allowed=("--append", "--overwrite"))

    from accumbench.levers import CHECK_REFUSES_COMPILE, Levers, check_levers, with_levers

    levers = Levers(**lever_settings())
    if levers.compile:
        fail_input(CHECK_REFUSES_COMPILE)
    workloads = []
    for spec, opts in targets:
        try:
            base = load_workload(spec, opts)
            for warning in check_levers(base, levers):  # builds it on the meta device: exit 2 if that raises
                click.echo(f"warning: {warning}", err=True)
            workload = with_levers(base, levers)
            norms = loss_norms_for(workload, config.loss_norm)
        except (WorkloadError, ValueError) as exc:
            fail_input(str(exc))
        workloads.append((workload, norms))

    if results is not None:
        try:
            results.claim()  # before the first check: locked, writable, old file set aside
        except ResultsFileError as exc:
            fail_input(str(exc))
        for note in results.notes:
            click.echo(f"note: {note}", err=True)
    try:
        code = _check_all(workloads, config, dtype, threads, results, as_json, strict, levers)
    finally:
        if results is not None:
            results.release()
    sys.exit(code)


def _check_all(workloads, config, dtype, threads, out, as_json, strict, levers=None) -> int:
    """Check each workload, appending its records as soon as they exist; print; the exit code.
    `levers` (accumbench.levers.Levers) the workloads were built with: their records carry them."""
    import uuid

    import torch

    from accumbench.equivalence import check_workload
    from accumbench.equivalence.record import check_provenance, failure_records, to_record
    from accumbench.equivalence.table import format_diagnosis, format_header, format_notes, format_table
    from accumbench.levers import levered_check_record
    from accumbench.results_file import ResultsWriteError

    torch.set_num_threads(threads)
    run_id = uuid.uuid4().hex[:12]
    provenance = check_provenance()
    checked, records, failed = [], [], []
    for workload, norms in workloads:
        click.echo(f"checking {workload.name} (N={','.join(map(str, config.accum_steps))}, "
                   f"{'/'.join(norms)}) ...", err=True)
        try:
            found = check_workload(workload, config)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a plug-in can raise anything; it becomes an error record
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
            hint = (" (an op without float64 support, such as grouped_mm in transformers' MoE experts, or a "
                    "model that makes float32 tensors itself: try --dtype float32)") \
                if dtype == "float64" and ("dtype" in message.lower() or "double" in message.lower()) else ""
            failed.append(f"{workload.name}: {message}{hint}")
            new = failure_records(workload.name, workload.options, norms, config, message + hint, run_id,
                                  provenance)
        else:
            checked += found
            new = [to_record(r, run_id, provenance) for r in found]
            if levers is not None:
                new = [levered_check_record(r, levers) for r in new]
        try:
            for record in new:
                if out is not None:
                    out.append(record)  # on disk at once, as run does
                records.append(record)
        except ResultsWriteError as exc:
            click.echo(f"error: {exc}", err=True)
            return 1
    if as_json:
        for record in records:
            click.echo(record.to_json())
    elif checked:
        click.echo(format_header(checked))
        click.echo()
        click.echo(format_table(checked))
        for block in (format_diagnosis(checked), format_notes(checked)):
            if block:
                click.echo()
                click.echo(block)
    for line in failed:
        click.echo(f"error: check failed for {line}", err=True)
    if out is not None:
        click.echo(f"wrote {len(records)} record(s) to {out.path}", err=True)

    unexplained = [r for r in checked if not r.explained]
    not_equivalent = [r for r in checked if not r.equivalent]
    if failed or unexplained or (strict and not_equivalent):
        if unexplained:
            click.echo(f"{len(unexplained)} result(s) not equivalent with no known cause", err=True)
        if strict and not_equivalent and not unexplained:
            click.echo(f"--strict: {len(not_equivalent)} result(s) not equivalent", err=True)
        return 1
    return 0
