"""accumbench: what gradient accumulation really costs and saves, measured.

Public API: `Workload` (the plug-in contract), `Record` and `load_results` (the result format).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Workload", "Record", "load_results", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import accumbench` (and the CLI's --help) does not import torch or pandas.
    if name == "Workload":
        from accumbench.workloads.base import Workload

        return Workload
    if name in ("Record", "load_results"):
        from accumbench import records

        return getattr(records, name)
    raise AttributeError(f"module 'accumbench' has no attribute {name!r}")
