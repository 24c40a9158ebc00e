"""`accumbench estimate --parallel fsdp --world-size W`: rank 0's FSDP peak for W GPUs."""

from __future__ import annotations

import time

import click

from accumbench.cli.common import fail_input, format_bytes


def estimate_fsdp_command(cases, assumptions, *, parallel: str, world_size: int | None,
                          reshard_after_forward: bool, fsdp_wrap: str | None, results, timeline: bool,
                          list_only: bool, seed: int) -> None:
    """Check the FSDP flags (`--parallel fsdp` and `--world-size` together: checked by the
    caller), expand the cases into their FSDP variants, predict each on a fake
    process group of `world_size` ranks and append each record to `results` (a `ResultsFile`
    under run's rules; None with --list) as soon as it exists."""
    from accumbench.distributed.fsdp import fsdp_cases
    from accumbench.results_file import ResultsFileError, ResultsWriteError
    from accumbench.distributed.fsdp import check_wrap
    from accumbench.runner import default_optimizer_label
    from accumbench.workloads import WorkloadError, load_workload

    if timeline:
        fail_input("--timeline is not available with --parallel fsdp")
    fcases, skipped = fsdp_cases(cases, reshard_after_forward, fsdp_wrap)
    if not fcases:
        fail_input("FSDP runs the large-batch and accumulated scenarios; every selected case is multi-task")
    names = {}
    for fcase in fcases:
        key = (fcase.case.workload, fcase.case.options)
        try:
            if key not in names:
                workload = load_workload(*key[:1], fcase.case.options_dict)
                names[key] = (workload.name, default_optimizer_label(workload))
                if not list_only:  # --list builds nothing
                    check_wrap(workload, fcase.wrap)
        except (WorkloadError, ValueError) as exc:
            fail_input(str(exc))

    def case_id_of(fcase) -> str:
        name, optimizer = names[(fcase.case.workload, fcase.case.options)]
        return fcase.case_id(name, optimizer, world_size)

    if list_only:
        for fcase in fcases:
            click.echo(case_id_of(fcase))
        click.echo(f"{len(fcases)} case(s) for rank 0 of {world_size}", err=True)
        return
    from accumbench.distributed.fake_group import estimate_fsdp

    if skipped:
        click.echo(f"note: {len(skipped)} multi-task case(s) skipped: FSDP runs large-batch and accumulated",
                   err=True)
    try:
        done = results.claim()
    except ResultsFileError as exc:
        fail_input(str(exc))
    with results:
        for note in results.notes:
            click.echo(f"note: {note}", err=True)
        todo = [f for f in fcases if case_id_of(f) not in done]
        click.echo(f"accumbench estimate: {len(todo)} FSDP case(s), rank 0 of {world_size} -> {results.path}"
                   + (f", {len(fcases) - len(todo)} already there" if done else ""), err=True)
        started = time.perf_counter()

        def keep(record) -> None:
            results.append(record)  # on disk at once: Ctrl-C or a crash loses nothing
            peak = format_bytes(record.peak_allocated) if record.peak_allocated is not None else record.status
            click.echo(f"{record.case_id}: {peak}" + (f" ({record.error})" if record.error else ""), err=True)

        try:
            records = estimate_fsdp(todo, assumptions, world_size, seed, on_record=keep)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: {results.written} record(s) kept in {results.path}", err=True)
            raise SystemExit(130)
        except ResultsWriteError as exc:
            click.echo(f"error: {exc}; {results.written} complete record(s) kept in {results.path}", err=True)
            raise SystemExit(1)
    click.echo(f"wrote {len(records)} estimate record(s) to {results.path} in {time.perf_counter() - started:.1f} s",
               err=True)
    if any(r.status == "error" for r in records):
        raise SystemExit(1)
