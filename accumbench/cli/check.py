"""`accumbench check`: is accumulating N micro-batches the same as one large batch?"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from accumbench.cli.common import fail_input, int_list, lever_options, lever_settings, workload_options

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
@click.option("--micro-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Samples per micro-batch n.")
@click.option("--loss-norm", type=click.Choice(["mean", "token", "both"]), default="both", show_default=True,
              help="mean: each micro-batch's mean loss / N. token: weighted by valid-token count (sum / total "
                   "tokens). both: mean, plus token where the workload counts its loss elements.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="float64 shows the method's error, not rounding (tolerance 1e-10); float32 is what training "
                   "sees (tolerance 1e-5).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the model and the batch.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads for torch; tiny models run fastest on one.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one record per workload, N and loss norm to this JSONL file (scenario "
                   "'equivalence'), for `report` and `compare`.")
@click.option("--append", is_flag=True, help="Add to an existing --out file (e.g. next to `run` results).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
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
    import uuid

    import torch

    from accumbench.equivalence import CheckConfig, check_workload, loss_norms_for
    from accumbench.equivalence.record import check_provenance, failure_records, to_record
    from accumbench.equivalence.table import format_diagnosis, format_header, format_notes, format_table
    from accumbench.records import write_records, append_record
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
    if out_path is not None and out_path.exists() and out_path.stat().st_size > 0 and not (append or overwrite):
        fail_input(f"{out_path} already exists; pass --append to add to it, --overwrite to replace it, or another --out")
    if append and overwrite:
        fail_input("--append and --overwrite exclude each other")

    from accumbench.levers import CHECK_REFUSES_COMPILE, Levers, check_levers, levered_check_record, with_levers

    levers = Levers(**lever_settings())
    if levers.compile:
        fail_input(CHECK_REFUSES_COMPILE)
    workloads = []
    for spec, opts in targets:
        try:
            workload = with_levers(load_workload(spec, opts), levers)
            check_levers(workload)
            norms = loss_norms_for(workload, config.loss_norm)
        except (WorkloadError, ValueError) as exc:
            fail_input(str(exc))
        workloads.append((workload, norms))

    torch.set_num_threads(threads)
    run_id = uuid.uuid4().hex[:12]
    provenance = check_provenance()
    results, records, failed = [], [], []
    for workload, norms in workloads:
        click.echo(f"checking {workload.name} (N={','.join(map(str, config.accum_steps))}, "
                   f"{'/'.join(norms)}) ...", err=True)
        try:
            found = check_workload(workload, config)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a plug-in can raise anything; it becomes an error record
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
            hint = " (a model that makes float32 tensors itself may need --dtype float32)" \
                if dtype == "float64" and ("dtype" in message.lower() or "double" in message.lower()) else ""
            failed.append(f"{workload.name}: {message}{hint}")
            records += failure_records(workload.name, workload.options, norms, config, message + hint, run_id,
                                       provenance)
            continue
        results += found
        records += [levered_check_record(to_record(r, run_id, provenance), levers) for r in found]

    if out_path is not None:
        if append:
            for record in records:
                append_record(out_path, record)
        else:
            write_records(out_path, records)
    if as_json:
        for record in records:
            click.echo(record.to_json())
    elif results:
        click.echo(format_header(results))
        click.echo()
        click.echo(format_table(results))
        for block in (format_diagnosis(results), format_notes(results)):
            if block:
                click.echo()
                click.echo(block)
    for line in failed:
        click.echo(f"error: check failed for {line}", err=True)
    if out_path is not None:
        click.echo(f"wrote {len(records)} record(s) to {out_path}", err=True)

    unexplained = [r for r in results if not r.explained]
    not_equivalent = [r for r in results if not r.equivalent]
    if failed or unexplained or (strict and not_equivalent):
        if unexplained:
            click.echo(f"{len(unexplained)} result(s) not equivalent with no known cause", err=True)
        if strict and not_equivalent and not unexplained:
            click.echo(f"--strict: {len(not_equivalent)} result(s) not equivalent", err=True)
        sys.exit(1)
