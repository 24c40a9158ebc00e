"""Built-in workloads and the plug-in loader.

`--workload NAME` picks a built-in from `BUILTIN_WORKLOADS`; `--workload path/to/file.py:factory`
or `--workload package.module:factory` loads a plug-in whose factory returns a `Workload`;
`--workload hf:<model>` a Hugging Face transformers model from its config (`accumbench.workloads.hf`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from accumbench.textfmt import parse_bool
from accumbench.workloads.base import Workload, WorkloadError, batch_inputs, default_forward, default_optimizer
from accumbench.workloads.gpt import gpt
from accumbench.workloads.multitask import shared_trunk, two_models
from accumbench.workloads.vision import convnet_bn, convnet_gn, mlp

HF_PREFIX = "hf:"  # --workload hf:<model>: a transformers model from its config

# A literal registry: name -> factory taking keyword options.
BUILTIN_WORKLOADS: dict[str, Callable[..., Workload]] = {
    "gpt": gpt,
    "convnet-bn": convnet_bn,
    "convnet-gn": convnet_gn,
    "mlp": mlp,
    "two-models": two_models,
    "shared-trunk": shared_trunk,
}


def parse_option_value(text: str) -> Any:
    """Turn a `KEY=VALUE` option's text into int, float, bool, str, or a list or dict when it is
    one in JSON (`depths=[2,2,6,2]`: config attributes that hold one per stage). 'nan' and 'inf'
    stay text: no option means a non-finite number by them, and as text a factory that wants a
    number refuses them by name (see `workloads.base.option_int`)."""
    if text.strip()[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except ValueError:
            return text  # not JSON after all: the factory that takes it says what it wants
    flag = parse_bool(text) if text.strip() not in ("1", "0") else None  # 1 and 0 stay numbers
    if flag is not None:
        return flag
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _load_factory(spec: str) -> Callable[..., Any]:
    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        raise WorkloadError(
            f"unknown workload {spec!r}: not a built-in ({', '.join(BUILTIN_WORKLOADS)}), "
            "not hf:<model> and not of the form path/to/file.py:factory or package.module:factory"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise WorkloadError(f"workload file not found: {path}")
        module_name = f"accumbench_plugin_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise WorkloadError(f"cannot import workload file {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        # The file's folder is importable while it loads, as with `python file.py`, so a plug-in
        # can import a module that sits next to it.
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # a plug-in can raise anything on import
            raise WorkloadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if folder in sys.path:
                sys.path.remove(folder)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise WorkloadError(f"cannot import module {target!r}: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attribute, None)
    if factory is None:
        raise WorkloadError(f"{target} has no attribute {attribute!r}")
    if not callable(factory):
        raise WorkloadError(f"{target}:{attribute} is not callable")
    return factory


def load_workload(spec: str, options: Mapping[str, Any] | None = None) -> Workload:
    """Resolve a workload spec (built-in name, `hf:<model>`, or plug-in `file.py:factory` /
    `module:factory`).

    `options` are keyword arguments for the factory (built-ins: e.g. `size`, `seq_len`,
    `padded`). Raises `WorkloadError` with one clear line for a missing file or attribute, a
    factory that raises, or one that returns something other than a `Workload`.
    """
    options = dict(options or {})
    if spec.startswith(HF_PREFIX):
        # Imported here: transformers is an optional dependency and slow to import.
        from accumbench.workloads.hf import hf

        factory = functools.partial(hf, spec[len(HF_PREFIX):])
    else:
        factory = BUILTIN_WORKLOADS.get(spec) or _load_factory(spec)
    try:
        workload = factory(**options)
    except WorkloadError:
        raise
    except TypeError as exc:
        raise WorkloadError(f"workload {spec!r} does not take options {sorted(options)}: {exc}") from exc
    except Exception as exc:
        raise WorkloadError(f"workload factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(workload, Workload):
        raise WorkloadError(
            f"workload factory {spec!r} returned {type(workload).__name__}, expected accumbench.Workload"
        )
    return workload


__all__ = [
    "BUILTIN_WORKLOADS",
    "Workload",
    "WorkloadError",
    "batch_inputs",
    "default_forward",
    "default_optimizer",
    "load_workload",
    "parse_option_value",
]
