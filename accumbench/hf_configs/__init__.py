"""Committed transformers configs for `--workload hf:<name>` (package data, so an installed
accumbench has them): tiny ones for tests and real shapes written from published
hyper-parameters. Each `<name>/config.json` says where its numbers come from in `_source`.

Kept free of torch and transformers so that `--help` can list them cheaply.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

TASK_NAMES = "causal-lm|seq2seq-lm|seq-cls|token-cls|masked-lm|image-cls"  # workloads.hf.TASKS (a test keeps them one)


def _root() -> Path:
    return Path(str(resources.files(__name__)))


def hf_examples() -> dict[str, str]:
    """The committed example configs: name -> where its numbers come from (its `_source`)."""
    return {path.parent.name: json.loads(path.read_text()).get("_source", "")
            for path in sorted(_root().glob("*/config.json"))}


def hf_example_path(name: str) -> Path | None:
    """The config.json of a committed example, or None."""
    path = _root() / name / "config.json"
    return path if path.is_file() else None


def hf_help() -> str:
    """One paragraph for `--workload`'s help: the hf: forms, the examples and the options."""
    return (f"hf:<model> is a Hugging Face transformers model with random weights: <model> is a config.json, "
            f"a folder holding one, an example ({', '.join(hf_examples())}), a model type with config "
            f"options (hf:llama --workload-opt hidden_size=2048) or a Hub id (config only); options "
            f"task={TASK_NAMES}, seq_len=N, padded=true, dtype=bfloat16 (needs pip install 'accumbench[hf]').")
