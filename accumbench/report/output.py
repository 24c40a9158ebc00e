"""The report's folder: written whole or not at all, and without stale files of its own.

A report is built in a staging folder beside the target (same file system, so moving is a
rename). Only when every file is written does it move into place: a report that fails leaves
the target as it was. In an existing folder, files an earlier report wrote that this one does
not (a figure for data no longer present, a section that is gone) are removed; a file the
report did not write (the user's notes, other tools' output) is never touched.

What the report wrote is listed in a manifest (`MANIFEST`) in the folder; files of a report made
before the manifest existed are recognised by name (`index.html`, `summary.md`, the figure files
of the registered figure kinds).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

MANIFEST = ".accumbench-report.json"


class ReportFolderError(ValueError):
    """The output folder cannot take a report (it is a file, say)."""


def stage(target: Path) -> tuple[Path, list[Path]]:
    """Make an empty staging folder beside `target`; return it and the parent folders created
    for it (so a failed report can remove them again)."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ReportFolderError(f"--out {target} is a file, expected a folder")
    created: list[Path] = []
    parent = target.absolute().parent
    for folder in [*reversed(parent.parents), parent]:
        if not folder.exists():
            created.append(folder)
        elif not folder.is_dir():
            raise ReportFolderError(f"cannot write --out {target}: {folder} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=parent))
    except OSError as exc:  # a path under a file, a read-only or pseudo file system
        _remove_created(created)
        raise ReportFolderError(f"cannot write --out {target}: {exc.strerror or exc}") from None
    # mkdtemp makes a private folder (0700); the report, once moved, gets the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    return staging, created


def discard(staging: Path, created: Iterable[Path] = ()) -> None:
    """Remove a staging folder (and the parents made for it) after a failure."""
    shutil.rmtree(staging, ignore_errors=True)
    _remove_created(created)


def _remove_created(created: Iterable[Path]) -> None:
    for folder in reversed(list(created)):
        try:
            folder.rmdir()
        except OSError:
            break  # not empty or not ours any more: leave it


def publish(staging: Path, target: Path, own_names: Iterable[str] = ()) -> list[str]:
    """Move the staged report into `target`; return the names of stale files removed.

    `own_names` are regular expressions of file names the report writes (for folders made
    before the manifest existed). Files in `target` that an earlier report wrote (listed in its
    manifest, or named like the report's files) and that this report did not write are removed.
    """
    staging, target = Path(staging), Path(target)
    new = sorted(p.name for p in staging.iterdir() if p.is_file())
    _write_manifest(staging, new)
    if not target.exists():
        os.replace(staging, target)
        return []
    earlier = set(_read_manifest(target))
    patterns = [re.compile(p) for p in own_names]
    for name in [*new, MANIFEST]:
        os.replace(staging / name, target / name)
    staging.rmdir()
    stale = []
    for path in sorted(target.iterdir()):
        name = path.name
        if name in new or name == MANIFEST or not path.is_file():
            continue
        if name in earlier or any(p.fullmatch(name) for p in patterns):
            path.unlink()
            stale.append(name)
    return stale


def _write_manifest(folder: Path, names: list[str]) -> None:
    (folder / MANIFEST).write_text(json.dumps({"written_by": "accumbench report", "files": names}, indent=1) + "\n",
                                   encoding="utf-8")


def _read_manifest(folder: Path) -> list[str]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = data.get("files", [])
    except (OSError, ValueError, AttributeError):
        return []  # no manifest, or not ours: fall back to the names alone
    # Only plain names: a manifest must never make the report delete outside its folder.
    return [f for f in files if isinstance(f, str) and f == Path(f).name and f not in ("", ".", "..")]


__all__ = ["MANIFEST", "ReportFolderError", "discard", "publish", "stage"]
