"""torchrun for `accumbench run --nproc-per-node N` (`launch.torchrun_command`): torch's own
launcher, quiet when the user interrupts it.

A Ctrl-C reaches the launcher, torchrun and the ranks together. The ranks keep what they
measured and say so; torchrun's agent stops them and then raises `SignalException` through its
own internals, a traceback that tells the user nothing. Here that ends in exit 130 (as a shell
reports an interrupted command) without one. torchrun's warnings (its elastic agent logs at
WARNING, e.g. each closing signal it sends) are turned down to errors for the launcher only:
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
    """Run `python -m torch.distributed.run ARGV`; 130 when interrupted, else torchrun's own
    ending (a failed rank raises as it would under torchrun)."""
    user_level = os.environ.get("LOGLEVEL")
    os.environ["LOGLEVEL"] = "ERROR"
    try:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.run import main as torchrun_main
    finally:
        if user_level is None:
            os.environ.pop("LOGLEVEL", None)
        else:
            os.environ["LOGLEVEL"] = user_level
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        torchrun_main(list(argv) if argv is not None else None)
    except (SignalException, KeyboardInterrupt):
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
