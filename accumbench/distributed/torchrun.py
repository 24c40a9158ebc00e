"""torchrun for `accumbench run --nproc-per-node N` (`launch.torchrun_command`): torch's own
launcher, quiet when the user interrupts it.

A Ctrl-C reaches the launcher, torchrun and the ranks together. The ranks keep what they
measured and say so; torchrun's agent stops them and then raises `SignalException` through its
own internals, a traceback that tells the user nothing. Here that ends in exit 130 (as a shell
reports an interrupted command) without one. torchrun's own logging (its elastic agent logs at
WARNING each closing signal it sends, at ERROR each failed rank) is turned off for the launcher
only, which says in one line which rank failed and how (a rank that stopped on bad input has
said why itself, and the launcher then exits 2):
its loggers read `LOGLEVEL` when torch creates them, or inherit the `torch.distributed.elastic`
logger's level; `LOGLEVEL` is set for the import only, so the ranks log as they would.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m torch.distributed.run ARGV`; 130 when interrupted, 2 when the ranks that
    failed stopped on bad input (they said why), a failed rank's exit code with one line naming
    it, else 0."""
    user_level = os.environ.get("LOGLEVEL")
    os.environ["LOGLEVEL"] = "CRITICAL"
    try:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.run import main as torchrun_main
    finally:
        if user_level is None:
            os.environ.pop("LOGLEVEL", None)
        else:
            os.environ["LOGLEVEL"] = user_level
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun_main(list(argv) if argv is not None else None)
    except (SignalException, KeyboardInterrupt):
        return INTERRUPTED
    except ChildFailedError as exc:
        # A rank that stopped on bad input has said why in one line and exited 2 (it fails on
        # its own only when what it was given differs by rank: a factory that reads RANK);
        # torchrun's forty-line report of it would bury that line.
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        # The ranks torchrun stopped because another failed end on its signal (a negative code).
        failed = {rank: code for rank, code in codes.items() if code > 0} or codes
        if set(failed.values()) == {2}:
            return 2
        rank, code = min(failed.items())
        print(f"error: rank {rank} exited with code {code}; its output above says why", file=sys.stderr)
        return code if isinstance(code, int) and code > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
