"""The provenance block of a record: software versions, device, commit, host, time."""

from __future__ import annotations

import datetime as _dt
import socket
import subprocess
from functools import lru_cache
from typing import Any

import torch

from accumbench import __version__

# Dense bf16/fp16 tensor-core peaks (FLOP/s) for MFU; substrings of `torch.cuda.get_device_name`.
PEAK_HALF_PRECISION_FLOPS: dict[str, float] = {
    "H200": 989.4e12,
    "H100": 989.4e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
}


@lru_cache(maxsize=None)
def git_commit(cwd: str = ".") -> str | None:
    """HEAD of the git checkout the benchmark runs in (the code being measured), if any."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """Fields that say with what software and where a record was made."""
    return {
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "accumbench_version": __version__,
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
    }


def utc_timestamp() -> str:
    """Now, ISO 8601 in UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def peak_flops(device_name: str, amp: str) -> float | None:
    """The device's dense half-precision peak when the step runs under bf16/fp16 autocast."""
    if amp not in ("bf16", "fp16"):
        return None
    for key, rate in PEAK_HALF_PRECISION_FLOPS.items():
        if key in device_name:
            return rate
    return None
