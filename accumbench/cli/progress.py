"""How a run looks while it goes and when it ends: one line per case (CI logs, pipes), a rich
progress bar on a terminal, and the end-of-run table."""

from __future__ import annotations

import sys
from typing import Sequence

import click

from accumbench.textfmt import format_bytes, text_table


def record_detail(record) -> str:
    """What a finished case's progress line ends with: its peak and speed, or its failure."""
    if record.status != "ok":
        return f"{record.status.upper()}: {record.error}"
    parts = [f"peak {format_bytes(record.peak_allocated)}"]
    if record.samples_per_s:
        parts.append(f"{record.samples_per_s:,.1f} samples/s"
                     + (f" ({len(record.step_times_s)} steps, {record.stop_reason})" if record.stop_reason else ""))
    return ", ".join(parts)


class LineProgress:
    """One line per finished case: readable in CI logs and pipes."""

    def case_started(self, index, total, case) -> None:
        """Print the start of the case's line."""
        click.echo(f"[{index}/{total}] {case.label()} ...", err=True, nl=False)

    def case_finished(self, index, total, case, record) -> None:
        """End the line with the peak and speed, or the failure."""
        click.echo(f" {record_detail(record)}", err=True)

    def close(self) -> None:
        """Nothing to tidy."""


class RichProgress:
    """A progress bar: case i/n, what runs now, the last peak."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[last]}"), transient=False,
        )
        self._task = self._progress.add_task("starting", total=total, last="")
        self._progress.start()

    def case_started(self, index, total, case) -> None:
        """Show the case now measured."""
        self._progress.update(self._task, description=case.label(), completed=index - 1)

    def case_finished(self, index, total, case, record) -> None:
        """Advance the bar; show the last peak or failure."""
        last = (f"last peak {format_bytes(record.peak_allocated)}" if record.status == "ok"
                else f"last: {record.status.upper()}")
        self._progress.update(self._task, completed=index, last=last)

    def close(self) -> None:
        """Stop redrawing the bar."""
        self._progress.stop()


def progress_for(total: int):
    """The bar on a terminal, one line per case otherwise (CI, pipes)."""
    return RichProgress(total) if sys.stderr.isatty() else LineProgress()


def print_summary(records: Sequence) -> None:
    """The end-of-run table: case, status, peak and samples/s."""
    if not records:
        return
    rows = [(r.case_id, r.status, format_bytes(r.peak_allocated),
             f"{r.samples_per_s:,.1f}" if r.samples_per_s else None) for r in records]
    click.echo(text_table(["case", "status", "peak", "samples/s"], rows, right=(2, 3)))
