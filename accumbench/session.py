"""One run session, shared by `run`, DDP rank 0 and `estimate`: claim the results file, skip
the cases it already holds, measure the rest appending each record at once, and end with a
summary and an exit code.

`execute` works with any runner that offers `case_id`, `run(cases, sink, skip, progress,
stop)`, `is_writer`, `share(value)` and the resume settings (`shared_settings()`,
`case_settings(case)`): `runner.Runner`, `distributed.DistributedRunner` (every rank calls
`execute`; rank 0 alone touches the file and talks) and `estimate.EstimateRunner`.

Exit codes: 0 every case measured (OOM counts as measured), 1 some case failed with an error or
the results file could not be written, 2 the results file cannot be used as asked, 130
interrupted (143 SIGTERM, 129 SIGHUP). Every complete record is in the file in every case.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import weakref
from typing import Any, Callable, Iterator, Sequence

import click

from accumbench.records import CASE_ONLY_SETTINGS, Record
from accumbench.results_file import ResultsFile, ResultsFileError, ResultsWriteError


def _claim(cases: Sequence[Any], runner: Any, results: ResultsFile) -> tuple[str, Any]:
    """Rank 0's decision: ("ok", ids to skip) or ("error", one line)."""
    try:
        done = results.claim()
    except ResultsFileError as exc:
        return "error", str(exc)
    if results.resume:
        expected = {runner.case_id(case): runner.case_settings(case) for case in cases}
        # Records of cases this request does not select are held to its settings too when those
        # are the same for every case (one --steps for all): a file keeps one setting.
        settings = [{k: v for k, v in s.items() if k not in CASE_ONLY_SETTINGS} for s in expected.values()]
        uniform = settings[0] if settings and all(s == settings[0] for s in settings) else None
        conflict = results.settings_conflict(lambda case_id: expected.get(case_id, uniform),
                                             runner.shared_settings())
        if conflict:
            results.release()
            return "error", conflict
    return "ok", done


def execute(cases: Sequence[Any], runner: Any, results: ResultsFile,
            progress: Callable[[int], Any] | None, *, heading: Callable[[int, int], str],
            summary: Callable[[list[Record]], None] | None = None) -> int:
    """Run `cases` through `runner` into `results`; return the exit code (see the module).

    `progress(total)` makes the progress display (None: silent); `heading(todo, already)` is
    the line printed before measuring; `summary(records)` prints the end-of-run table."""
    writer = runner.is_writer
    decision = _claim(cases, runner, results) if writer else None
    kind, payload = runner.share(decision)
    if kind == "error":
        if writer:
            click.echo(f"error: {payload}", err=True)
        return 2
    try:
        with interrupts_outside_finalizers():
            return _measure(cases, runner, results, payload, progress if writer else None, heading, summary)
    finally:
        if writer:
            results.release()


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, delivered as Ctrl-C is, so the run ends as it does (every record kept,
    the lock released, a line saying so) with the signal's exit code (128 + its number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# What each signal's handler is when nobody has set one: only those are taken over (no SIGHUP
# on Windows).
_TAKEN_OVER = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL,
               **({signal.SIGHUP: signal.SIG_DFL} if hasattr(signal, "SIGHUP") else {})}


@contextlib.contextmanager
def interrupts_outside_finalizers() -> Iterator[None]:
    """Ctrl-C as KeyboardInterrupt (SIGTERM and SIGHUP as `Terminated`), but never inside a
    `weakref.finalize` callback. The memory trackers count each freed storage in one, thousands
    a step; an interrupt landing in one is printed by Python as "Exception ignored in: <finalize
    ...>" and a traceback, and the step goes on. There the interrupt is delivered again a few
    milliseconds later, outside it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    finalizing = weakref.finalize.__call__.__code__

    def interrupt(signum, frame) -> None:
        while frame is not None:
            if frame.f_code is finalizing:
                threading.Timer(0.005, os.kill, (os.getpid(), signum)).start()
                return
            frame = frame.f_back
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

    taken = [sig for sig, untouched in _TAKEN_OVER.items() if signal.getsignal(sig) is untouched]
    for sig in taken:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig in taken:
            signal.signal(sig, _TAKEN_OVER[sig])


def _measure(cases, runner, results, done, progress, heading, summary) -> int:
    writer = runner.is_writer
    todo = [c for c in cases if runner.case_id(c) not in done]
    display = None
    if writer:
        for note in results.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(heading(len(todo), len(cases) - len(todo)), err=True)
        display = progress(len(todo)) if progress else None
    written: list[Record] = []
    failure: list[ResultsWriteError] = []

    def keep(record: Record) -> None:
        if failure:
            return
        try:
            results.append(record)  # on disk at once: Ctrl-C or a crash loses nothing
        except ResultsWriteError as exc:
            failure.append(exc)
            return
        written.append(record)

    try:
        records = runner.run(todo, sink=keep, progress=display, stop=lambda: bool(failure))
    except KeyboardInterrupt as exc:
        _close(display)
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        if writer:
            held = len(results.existing) + len(written)
            what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
            click.echo(f"\n{what}: {len(written)} record(s) written this run, {held} in all kept in "
                       f"{results.path}; run again with --resume to measure the rest", err=True)
        return 128 + signum
    _close(display)
    if writer:
        if summary:
            summary(written)
        if failure:
            click.echo(f"error: {failure[0]}; run again with --resume to measure the rest", err=True)
            return 1
        click.echo(f"wrote {len(written)} record(s) to {results.path}", err=True)
    errors = [r for r in records if r.status == "error"]
    if errors:
        if writer:
            click.echo(f"{len(errors)} case(s) failed with an error (see the 'error' and 'traceback' fields)",
                       err=True)
        return 1
    return 0


def _close(display: Any) -> None:
    if display is not None and hasattr(display, "close"):
        display.close()
