"""`accumbench run --nproc-per-node N`: launching torchrun, and the exit code the ranks hand back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

EXIT_FILE_ENV = "ACCUMBENCH_DDP_EXIT_FILE"


def torchrun_command(nproc_per_node: int, run_args: Sequence[str], python: str = sys.executable) -> list[str]:
    """`python -m accumbench.distributed.torchrun --standalone --nproc-per-node N -m accumbench
    run --distributed ARGS` (torchrun, quiet on Ctrl-C): a single-node job with a local
    rendezvous on a free port."""
    return [python, "-m", "accumbench.distributed.torchrun", "--standalone", f"--nproc-per-node={nproc_per_node}",
            "-m", "accumbench", "run", "--distributed", *run_args]


def launch_env(nproc_per_node: int, device_type: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The children's environment: on the CPU, `OMP_NUM_THREADS` shares the cores between the
    ranks (torchrun would set 1 and warn) unless the user set it."""
    env = dict(environ)
    if device_type == "cpu" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc_per_node))
    return env


def launch_torchrun(nproc_per_node: int, run_args: Sequence[str], device_type: str) -> int:
    """Run the job under torchrun and return the run's exit code (the ranks print for themselves).

    The ranks report the run's exit code through a file named in `$ACCUMBENCH_DDP_EXIT_FILE` and
    exit 0, so an error record (exit 1) does not make torchrun print a failure report; when no
    code came back (a rank crashed), torchrun's own exit code is returned.
    """
    command = torchrun_command(nproc_per_node, run_args)
    with tempfile.TemporaryDirectory(prefix="accumbench-ddp-") as tmp:
        exit_file = Path(tmp) / "exit-code"
        env = {**launch_env(nproc_per_node, device_type), EXIT_FILE_ENV: str(exit_file)}
        process = subprocess.Popen(command, env=env)
        stopped_by: list[int] = []

        def stop(signum, frame) -> None:
            # A SIGTERM or SIGHUP for the launcher alone (a job scheduler, a closed terminal)
            # would leave torchrun and its ranks writing to the results file after the launcher
            # let go of its lock: pass it on, and wait for them below.
            stopped_by.append(signum)
            process.send_signal(signum)

        previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGHUP)}
        try:
            returncode = process.wait()
        except KeyboardInterrupt:  # torchrun got the Ctrl-C too and stops its ranks; wait for them
            process.wait()
            return 130
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if stopped_by:
            return 128 + stopped_by[0]
        try:
            return int(exit_file.read_text().strip())
        except (OSError, ValueError):
            return returncode


def hand_back_exit_code(code: int, is_writer: bool, environ: Mapping[str, str] = os.environ) -> int:
    """Under `launch_torchrun`: rank 0 writes the run's exit code for the launcher, and every
    rank then exits 0. Otherwise (plain torchrun) the code itself."""
    path = environ.get(EXIT_FILE_ENV)
    if not path:
        return code
    if is_writer:
        Path(path).write_text(f"{code}\n")
    return 0
