"""The `Workload` contract: how to build a model, make a batch and compute its loss(es)."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from accumbench.textfmt import is_integer, parse_bool

Batch = Any
LossOutput = "torch.Tensor | dict[str, torch.Tensor]"


def batch_inputs(batch: Batch) -> Any:
    """The part of a batch the model's forward takes: `batch[0]` of a tuple/list,
    `batch["inputs"]` of a dict, else the batch itself."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, Mapping):
        return batch["inputs"]
    return batch


def default_forward(model: nn.Module, batch: Batch, task: str | None = None) -> Any:
    """Call the model on the batch's inputs (see `batch_inputs`); `task` is ignored."""
    return model(batch_inputs(batch))


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW with `foreach=True`: the stated default on every device (CPU and CUDA would
    otherwise pick different implementations, and the implementation changes the peak)."""
    return torch.optim.AdamW(params, lr=1e-4, foreach=True)


class WorkloadError(ValueError):
    """A workload spec that cannot be loaded; the message is one line for the user."""


def option_bool(workload: str, key: str, value: Any) -> bool:
    """A factory's boolean option: a bool, 0/1, or true/false, yes/no, on/off, 1/0 as text (as
    `--workload-opt` and suites give it). Anything else is a `WorkloadError` naming the option:
    a plain truth test would take 'maybe' or 'False ' for true."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    flag = parse_bool(value) if isinstance(value, str) else None
    if flag is not None:
        return flag
    raise WorkloadError(f"workload {workload}: option {key} takes true or false (also yes/no, on/off, 1/0), "
                        f"got {value!r}")


def option_int(workload: str, key: str, value: Any, minimum: int = 1) -> int:
    """A factory's whole-number option (a size, a length): an int, or its digits as text, at
    least `minimum`; else a `WorkloadError` naming the option (not int()'s "invalid literal")."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            pass
    if not is_integer(value):
        raise WorkloadError(f"workload {workload}: option {key} takes a whole number, got {value!r}")
    if value < minimum:
        raise WorkloadError(f"workload {workload}: option {key} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Workload:
    """A model, its data and its loss, as the scenarios need them.

    - `build_model()` builds the model on the CPU (the runner moves it to the device).
    - `make_batch(n, generator)` returns a batch of `n` samples as CPU tensors, deterministic for a
      seeded generator. Default convention: `(inputs, targets)`; `forward` reads `batch[0]`.
    - `loss(output, batch)` returns a scalar tensor, or for multi-task workloads a dict with one
      scalar per task (the multi-task scenarios need the dict).
    - `tokens_per_sample`: tokens in one sample, for tokens/s (None when not a token model).
    - `build_optimizer(params)`: default AdamW(foreach=True), see `default_optimizer`.

    Extensions beyond the minimal contract (name, build_model, make_batch, loss), all optional:
    - `forward(model, batch, task)`: how to run the model; for `layout="separate"` it must
      honour `task` (run only that task's model) so the sequential scenario holds one graph.
    - `tasks` and `layout` (`"separate"` or `"shared-trunk"`): multi-task structure.
    - `count_loss_elements(batch)`: how many elements (valid tokens) the loss averages over;
      needed for `loss_norm="token"`.
    - `options`: the keyword options the factory was called with, recorded with each result.
    - `checkpoint_blocks`: the module pattern `--checkpoint blocks` checkpoints (class or
      qualified names, see `accumbench.levers`); None when the workload names no blocks.
    """

    name: str
    build_model: Callable[[], nn.Module]
    make_batch: Callable[[int, torch.Generator], Batch]
    loss: Callable[[Any, Batch], Any]
    tokens_per_sample: int | None = None
    build_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None
    forward: Callable[..., Any] = default_forward
    tasks: tuple[str, ...] = ()
    layout: str | None = None
    count_loss_elements: Callable[[Batch], int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    checkpoint_blocks: str | None = None

    @property
    def is_multitask(self) -> bool:
        """True when the loss returns one value per task."""
        return len(self.tasks) > 1

    def optimizer_for(self, model: nn.Module) -> torch.optim.Optimizer:
        """Build this workload's optimizer over the model's parameters."""
        factory = self.build_optimizer or default_optimizer
        return factory(model.parameters())


def seed_host_generators(seed: int) -> None:
    """Seed every global generator a workload's model, batches or step may draw from: torch's,
    Python's `random`, and numpy's when something loaded numpy. A model that drops layers with
    `random.random()` must build and step alike in every run, or its peak is not repeatable."""
    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
