"""The results file a command writes records to: one policy for run, DDP, estimate and check.

`ResultsFile(path, resume=..., overwrite=..., append=...)` decides, before anything is measured,
what may happen to the file, and then owns it for the whole run:

- an existing non-empty file is refused unless `--resume` (skip the cases it holds), `--append`
  (add to it; `check`) or `--overwrite` (start afresh); contradicting flags are refused;
- `--overwrite` moves the old file, and its timelines sidecar, to the first free backup name
  (FILE.bak, FILE.bak.1, ...): an earlier backup is never destroyed;
- an exclusive lock (`fcntl.flock` on FILE.lock, which names the holder's pid, host and command)
  keeps a second writer out;
- the folder is created and the file opened for appending at `claim()`, so a read-only folder or
  a path under a file is refused before the first measurement;
- a torn last line (no newline and not a JSON object: a crash or full disk mid-write) is cut
  off on `--resume`/`--append` and kept in FILE.torn, and the caller is told;
- `append()` writes one line, flushes and fsyncs; an OSError (full disk, I/O error) truncates the
  partial line and raises `ResultsWriteError`, every complete record staying in the file.

Problems the user can fix raise `ResultsFileError` with one line (the CLI exits 2).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from accumbench.records import RESUME_SETTINGS, Record, RecordError, iter_records
from accumbench.timeline import Timeline, append_timeline, backup_suffix, sidecar_path

LOCK_HOLDER_ENV = "ACCUMBENCH_RESULTS_LOCK"  # set by a launcher that holds the lock for its children


class ResultsFileError(Exception):
    """The results file cannot be used as asked; the message is one line for the user."""


class ResultsWriteError(Exception):
    """Appending a record failed mid-run (full disk, I/O error); complete records are kept."""


def _flag_error(resume: bool, overwrite: bool, append: bool) -> str | None:
    given = [name for name, on in (("--resume", resume), ("--overwrite", overwrite), ("--append", append)) if on]
    if len(given) > 1:
        return f"{' and '.join(given)} exclude each other"
    return None


def _describe_os_error(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (read-only)"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a path component is a file, not a folder"
    return exc.strerror or str(exc)


class ResultsFile:
    """One JSONL results file and what a command may do with it (see the module docstring).

    `allowed` names the flags the command offers, for the refusal message (e.g. ("--resume",
    "--overwrite") for run, ("--append", "--overwrite") for check).
    """

    def __init__(self, path: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False,
                 append: bool = False, command: str = "accumbench",
                 allowed: tuple[str, ...] = ("--resume", "--overwrite")) -> None:
        self.path = Path(path)
        self.resume, self.overwrite, self.append_mode = resume, overwrite, append
        self.command = command
        self.allowed = allowed
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.notes: list[str] = []  # what claim() did that the user should hear (backup, repair)
        self.existing: list[Record] = []  # records already in the file (resume / append)
        self.written = 0
        self._lock_fh: Any = None
        self._fh: Any = None

    # --- before claiming: checks that change nothing -------------------------------------------

    def problem(self) -> str | None:
        """Why the file cannot be used as asked, or None; changes nothing. Checks the flags, an
        existing file, and that the folder can hold the file."""
        flags = _flag_error(self.resume, self.overwrite, self.append_mode)
        if flags:
            return flags
        path = self.path
        if path.is_dir():
            return f"--out {path} is a folder; give a .jsonl file path"
        if self._has_content() and not (self.resume or self.overwrite or self.append_mode):
            offers = {"--resume": "--resume to add the missing cases", "--append": "--append to add to it",
                      "--overwrite": "--overwrite to start afresh"}
            return (f"{path} already holds results; pass " + ", ".join(offers[f] for f in self.allowed)
                    + ", or another --out")
        # The nearest existing ancestor must be a writable folder.
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"cannot write {path}: {parent} is a file, not a folder"
        try:  # a real probe: os.access says yes to root on a read-only mount
            fd, probe = tempfile.mkstemp(prefix=".accumbench-probe-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return f"cannot write {path}: the folder {parent} is not writable ({_describe_os_error(exc)})"
        if path.exists() and not os.access(path, os.W_OK):
            return f"cannot write {path}: the file is read-only"
        return None

    def _has_content(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    # --- claiming -------------------------------------------------------------------------------

    def claim(self) -> set[str]:
        """Take the lock and make the file ready to append to; return the case ids already
        measured there (ok or oom) that --resume skips. Raises `ResultsFileError`."""
        problem = self.problem()
        if problem:
            raise ResultsFileError(problem)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsFileError(f"cannot create the folder of {self.path}: {_describe_os_error(exc)}") from None
        self.lock()
        try:
            done = self._prepare()
            # Unbuffered: a write the disk refuses leaves nothing pending that a later flush or
            # close could add to the file after the partial line is cut away.
            self._fh = open(self.path, "ab", buffering=0)
        except ResultsFileError:
            self.release()
            raise
        except OSError as exc:
            self.release()
            raise ResultsFileError(f"cannot write {self.path}: {_describe_os_error(exc)}") from None
        return done

    def _prepare(self) -> set[str]:
        if not self._has_content():
            return set()
        if self.overwrite:
            self._set_aside()
            return set()
        self._repair_torn_line(self.path)
        if sidecar_path(self.path).is_file():  # its timelines are appended to as well
            self._repair_torn_line(sidecar_path(self.path))
        try:
            self.existing = list(iter_records(self.path))
        except RecordError as exc:
            raise ResultsFileError(f"cannot {'resume' if self.resume else 'append'}: {exc}") from None
        if not self.resume:
            return set()
        return {r.case_id for r in self.existing if r.status in ("ok", "oom")}

    def _set_aside(self) -> None:
        """Move the file and its timelines sidecar to the first backup name free for both."""
        sidecar = sidecar_path(self.path)
        n = 0
        while True:
            suffix = backup_suffix(n)
            targets = [p.with_name(p.name + suffix) for p in (self.path, sidecar)]
            if not any(t.exists() for t in targets):
                break
            n += 1
        for source, target in zip((self.path, sidecar), targets):
            if source.exists():
                source.replace(target)
        self.notes.append(f"the previous results were kept as {targets[0]}")

    def _repair_torn_line(self, path: Path) -> None:
        """A last line without its newline is a write that never finished when it is not a
        JSON object (as `records.iter_records` judges): cut it off the file (the results file
        or its timelines sidecar) and keep it in PATH.torn (appended to, never replaced). A
        complete line that only lacks its newline gets one, so the next starts a line of its own."""
        data = path.read_bytes()
        if data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        last = data[start:]
        try:
            complete = isinstance(json.loads(last), dict)
        except ValueError:
            complete = False
        if complete:
            with open(path, "ab") as fh:
                fh.write(b"\n")
            return
        torn = path.with_name(path.name + ".torn")
        with open(torn, "ab") as fh:
            fh.write(last + b"\n")
        with open(path, "r+b") as fh:
            fh.truncate(start)
        self.notes.append(f"the last line of {path} was incomplete ({len(last)} bytes, a run stopped "
                          f"mid-write): cut off and kept in {torn}")

    # --- the lock -------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the exclusive lock beside the file, or raise `ResultsFileError` naming the
        holder. A launcher that set `LOCK_HOLDER_ENV` to this path holds it for its children."""
        import fcntl

        if self._lock_fh is not None:
            return
        while True:
            try:
                # The folder may not exist yet, as for `claim` (a launcher locks before its ranks claim).
                self.lock_path.parent.mkdir(parents=True, exist_ok=True)
                fh = open(self.lock_path, "a+", encoding="utf-8")
            except OSError as exc:
                raise ResultsFileError(f"cannot write {self.path}: {_describe_os_error(exc)}") from None
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                if os.environ.get(LOCK_HOLDER_ENV) == str(self.lock_path.resolve()):
                    return  # our launcher (torchrun's parent) holds it for this job
                elsewhere = " or choose another --out" if self.allowed else ""  # a command that writes --out
                raise ResultsFileError(f"{self.path} is being written by {holder}; wait for it to finish"
                                       f"{elsewhere}") from None
            # The holder before us may have removed the file between our open and our lock.
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} ({self.command})\n")
        fh.flush()
        self._lock_fh = fh

    def release(self) -> None:
        """Close the file and drop the lock (removing the lock file)."""
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if self._lock_fh is not None:
            try:
                self.lock_path.unlink()
            except OSError:
                pass
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    # --- writing --------------------------------------------------------------------------------

    def append(self, record: Record) -> None:
        """Append one record and fsync it; an OSError becomes `ResultsWriteError` after the
        partial line is truncated away."""
        if self._fh is None:
            raise RuntimeError("ResultsFile.append before claim()")
        line = record.to_json() + "\n"
        start = os.fstat(self._fh.fileno()).st_size
        try:
            _write_line(self._fh, line)
        except OSError as exc:
            try:
                os.ftruncate(self._fh.fileno(), start)
            except OSError:
                pass
            raise ResultsWriteError(
                f"writing {self.path} failed: {_describe_os_error(exc)}. Stopped after {self.written} "
                f"record(s) written this run; every complete record is kept"
            ) from None
        self.written += 1

    def timeline_sink(self) -> Callable[[Record, Timeline], str]:
        """A sink that appends each timeline to FILE.timelines.jsonl and returns its name."""
        path = sidecar_path(self.path)

        def sink(record: Record, timeline: Timeline) -> str:
            path.parent.mkdir(parents=True, exist_ok=True)
            append_timeline(path, timeline)
            return path.name

        return sink

    # --- resume settings ------------------------------------------------------------------------

    def settings_conflict(self, expected: Callable[[str], Mapping[str, Any] | None],
                          shared: Mapping[str, Any]) -> str | None:
        """Why the records already in the file were measured differently from this request, or
        None. `expected(case_id)` gives the settings the request would record for a case it
        selects (None for other ids); `shared` the settings every case of the request records.
        A setting a record does not carry (None, e.g. an older file) is not compared."""
        for record in self.existing:
            wanted = dict(shared)
            wanted.update(expected(record.case_id) or {})
            for name in RESUME_SETTINGS:
                if name not in wanted:
                    continue
                have, want = getattr(record, name, None), wanted[name]
                if isinstance(have, dict) and isinstance(want, dict):
                    # A block of settings, each key a setting of its own. The workload factory's
                    # options are all given by the user: one given on one side only differs too.
                    # An estimate's assumptions hold what was applied to the case besides the
                    # keys a request names: only those are compared.
                    keys = sorted(set(have) | set(want)) if name == "workload_options" else [
                        key for key in want if key in have]
                    differing = next((key for key in keys if have.get(key, _NOT_GIVEN) != want.get(key, _NOT_GIVEN)),
                                     None)
                    if differing is None:
                        continue
                    name, have, want = (f"{name}.{differing}", have.get(differing, _NOT_GIVEN),
                                        want.get(differing, _NOT_GIVEN))
                if have is None or want is None or have == want:
                    continue
                return (f"cannot resume: {self.path} was measured with {name}={have!r} (case {record.case_id}), "
                        f"this run asks for {name}={want!r}; use the same settings, or another --out, "
                        "or --overwrite")
        return None


class _NotGiven:
    """An option one side did not give (its repr reads as such in the refusal)."""

    def __repr__(self) -> str:
        return "(not given)"


_NOT_GIVEN = _NotGiven()


def _write_line(fh: Any, line: str) -> None:
    """Write one line to an unbuffered binary file, all of it, and fsync it (a seam the tests
    replace to simulate a full disk)."""
    data = memoryview(line.encode("utf-8"))
    while data:
        data = data[fh.write(data):]
    os.fsync(fh.fileno())


__all__ = ["LOCK_HOLDER_ENV", "ResultsFile", "ResultsFileError", "ResultsWriteError"]
