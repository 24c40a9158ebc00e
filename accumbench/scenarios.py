"""The training-step strategies, in plain PyTorch, each readable as the loop a user would write.

One call of a scenario is one optimizer step: forward/backward over its micro-batches, then
`optimizer.step()`, then `zero_grad()`. The runner builds the `TrainingState` and the host
micro-batches (made before timing, pinned for CUDA) and hands the step to a meter. Each
micro-step copies its micro-batch to the device, as a training loop does, so the device holds
one micro-batch at a time whatever N is. `state.mark(...)` calls tell an optional
observer (the memory timeline, the live-bytes tracker) where in the step we are; by default
they do nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.utils._pytree as pytree
from torch import nn

from accumbench.workloads.base import Workload

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LOSS_NORMS = ("mean", "token")


class PhaseObserver(Protocol):
    """Told at each phase boundary of a step: `phase` is e.g. "forward", "backward",
    "optimizer", "zero_grad", "end"; `micro_step` is the micro-batch index or None."""

    def phase(self, name: str, micro_step: int | None) -> None: ...


class _NoObserver:
    def phase(self, name: str, micro_step: int | None) -> None:
        return None


@dataclass(frozen=True)
class StepOptions:
    """Knobs of a training step.

    - `amp`: autocast dtype, "bf16", "fp16" (with a GradScaler) or "none".
    - `set_to_none`: `zero_grad(set_to_none=...)`: None frees the gradients between steps.
    - `loss_norm`: how micro-batch losses are scaled so their gradients sum to the large
      batch's: "mean" divides each micro-batch's mean loss by N; "token" weights it by its share
      of the effective batch's loss elements (valid tokens), i.e. sum / total count.
    """

    amp: str = "none"
    set_to_none: bool = True
    loss_norm: str = "mean"

    def __post_init__(self) -> None:
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")
        if self.loss_norm not in LOSS_NORMS:
            raise ValueError(f"loss_norm must be one of {', '.join(LOSS_NORMS)}, got {self.loss_norm!r}")


@dataclass
class TrainingState:
    """Everything a scenario step touches: model, optimizer, optional GradScaler, workload, knobs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    workload: Workload
    options: StepOptions
    device: torch.device
    scaler: Any = None  # torch.amp.GradScaler for fp16, else None
    observer: PhaseObserver = field(default_factory=_NoObserver)
    # DistributedDataParallel: when True, micro-steps before the last run under `no_sync()`.
    skip_sync_until_last: bool = False
    # Tensors a wrapper keeps between steps that the model's parameters do not show (DDP's
    # gradient buckets, held by its C++ reducer), so that a tracer counts them from the start.
    held_buffers: list[torch.Tensor] = field(default_factory=list)
    # When a list, `backward` appends (micro-step, loss) to it: the runner's NaN/inf check on the
    # step after the measured ones. None while measuring, so the timed steps keep no extra tensor.
    loss_log: list | None = None
    micro_step: int | None = None  # the micro-step of the phase marked last

    def mark(self, phase: str, micro_step: int | None = None) -> None:
        """Tell the observer a phase starts."""
        self.micro_step = micro_step
        self.observer.phase(phase, micro_step)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for forward and loss, or a null context without AMP."""
        dtype = AMP_DTYPES[self.options.amp]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def to_device(self, host_batch: Any) -> Any:
        """This micro-batch's copy on the device (a real copy on the CPU too, so every device
        holds exactly one micro-batch; the host batches stand for the data loader's memory)."""
        return copy_to_device(host_batch, self.device)

    def grad_sync(self, micro_step: int, micro_steps: int) -> contextlib.AbstractContextManager:
        """With `skip_sync_until_last`, every micro-step but the last skips the gradient sync:
        DDP's `model.no_sync()` (all-reduced once per optimizer step), FSDP2's
        `set_requires_gradient_sync(False)` (reduce-scattered once); otherwise a null context."""
        if self.skip_sync_until_last and micro_step < micro_steps - 1:
            if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2 has no no_sync()
                return _fsdp_sync_off(self.model)
            return self.model.no_sync()
        return contextlib.nullcontext()

    def forward_loss(self, batch: Any, task: str | None = None) -> Any:
        """Forward and loss under autocast; a dict of losses for multi-task workloads."""
        with self.autocast():
            return self.workload.loss(self.workload.forward(self.model, batch, task), batch)

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """`loss.backward()`, through the GradScaler under fp16 so small gradients don't flush to 0."""
        if self.loss_log is not None:
            self.loss_log.append((self.micro_step, loss.detach()))
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(retain_graph=retain_graph)

    def optimizer_step(self) -> None:
        """`optimizer.step()` then `zero_grad()`. Under fp16 the scaler unscales the gradients
        summed over the whole accumulation window once, skips the step on inf/nan, and only
        then updates its scale, so the scale never changes inside the window."""
        self.mark("optimizer")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.mark("zero_grad")
        self.optimizer.zero_grad(set_to_none=self.options.set_to_none)
        self.mark("end")


@contextlib.contextmanager
def _fsdp_sync_off(model: nn.Module):
    """FSDP2's `no_sync()`: gradients stay unsharded and un-reduced until sync is back on."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def copy_to_device(obj: Any, device: torch.device) -> Any:
    """Copy every tensor in nested tuples/lists/dicts to `device` (asynchronously from pinned
    host memory on CUDA); tensors already there are cloned."""
    def copy(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        return leaf.clone() if leaf.device == device else leaf.to(device, non_blocking=True)

    return pytree.tree_map(copy, obj)


def new_training_state(
    workload: Workload, model: nn.Module, device: torch.device, options: StepOptions
) -> TrainingState:
    """Build the optimizer (and the GradScaler for fp16) for a model already on `device`."""
    optimizer = workload.optimizer_for(model)
    scaler = torch.amp.GradScaler(device.type) if options.amp == "fp16" else None
    return TrainingState(model, optimizer, workload, options, device, scaler)


def loss_weights(workload: Workload, micro_batches: Sequence[Any], loss_norm: str) -> list[float]:
    """The factor each micro-batch's loss is multiplied by before backward.

    "mean": 1/N each (the usual `loss / accum_steps`). "token": count_i / sum(counts), so the
    summed gradient is that of the mean over every valid token of the effective batch. Computed
    on the host before the step (counting on the device would synchronise inside the timing).
    """
    n = len(micro_batches)
    if loss_norm == "mean":
        return [1.0 / n] * n
    if workload.count_loss_elements is None:
        raise ValueError(token_norm_unsupported(workload))
    counts = [workload.count_loss_elements(b) for b in micro_batches]
    total = sum(counts)
    return [c / total for c in counts]


def _scaled(loss: torch.Tensor, weight: float) -> torch.Tensor:
    # A weight of exactly 1 (one micro-batch) skips the multiply: same graph as the plain loop.
    return loss if weight == 1.0 else loss * weight


# --- the scenarios ---------------------------------------------------------------------------

def large_batch_step(state: TrainingState, micro_batches: Sequence[Any], weights: Sequence[float]) -> None:
    """One forward and backward over the whole batch, then step: the reference."""
    (host_batch,) = micro_batches
    state.mark("forward", 0)
    batch = state.to_device(host_batch)
    loss = state.forward_loss(batch)
    state.mark("backward", 0)
    state.backward(loss)
    state.optimizer_step()


def accumulated_step(state: TrainingState, micro_batches: Sequence[Any], weights: Sequence[float]) -> None:
    """N micro-batches, gradients summed by autograd across the backward calls, one step."""
    for i, (host_batch, weight) in enumerate(zip(micro_batches, weights)):
        with state.grad_sync(i, len(micro_batches)):
            state.mark("forward", i)
            batch = state.to_device(host_batch)  # the previous micro-batch's copy is freed
            # loss / N (or count_i / total): summed gradients then equal the large batch's.
            loss = _scaled(state.forward_loss(batch), weight)
            state.mark("backward", i)
            state.backward(loss)
        # The graph (activations) is freed here; only .grad persists into the next micro-step.
    state.optimizer_step()


def multitask_combined_step(state: TrainingState, micro_batches: Sequence[Any], weights: Sequence[float]) -> None:
    """`(l1 + l2).backward()`: one forward for all tasks, both graphs alive until the backward."""
    for i, (host_batch, weight) in enumerate(zip(micro_batches, weights)):
        state.mark("forward", i)
        batch = state.to_device(host_batch)
        losses = state.forward_loss(batch)
        state.mark("backward", i)
        state.backward(_scaled(sum(losses.values()), weight))
    state.optimizer_step()


def multitask_sequential_step(state: TrainingState, micro_batches: Sequence[Any], weights: Sequence[float]) -> None:
    """`l1.backward(); l2.backward()`: autograd sums both tasks' gradients.

    Separate models: forward and backward one task at a time, so at most one graph is alive.
    Shared trunk: both losses come from one trunk forward; the first backward must keep the
    graph (`retain_graph=True`) for the second, which runs the trunk's backward again.
    """
    tasks = state.workload.tasks
    separate = state.workload.layout == "separate"
    for i, (host_batch, weight) in enumerate(zip(micro_batches, weights)):
        batch = state.to_device(host_batch)
        if separate:
            for task in tasks:
                state.mark("forward", i)
                loss = state.forward_loss(batch, task=task)[task]
                state.mark("backward", i)
                state.backward(_scaled(loss, weight))
        else:
            state.mark("forward", i)
            losses = state.forward_loss(batch)
            for j, task in enumerate(tasks):
                state.mark("backward", i)
                state.backward(_scaled(losses[task], weight), retain_graph=j < len(tasks) - 1)
    state.optimizer_step()


ScenarioStep = Callable[[TrainingState, Sequence[Any], Sequence[float]], None]

# A literal registry: scenario name -> step function.
SCENARIOS: dict[str, ScenarioStep] = {
    "large-batch": large_batch_step,
    "accumulated": accumulated_step,
    "multitask-combined": multitask_combined_step,
    "multitask-sequential": multitask_sequential_step,
}
MULTITASK_SCENARIOS = ("multitask-combined", "multitask-sequential")


def needs_retain_graph(scenario: str, workload: Workload) -> bool:
    """True when the scenario must keep the graph between backward calls (shared trunk, sequential)."""
    return scenario == "multitask-sequential" and workload.layout != "separate"


def token_norm_unsupported(workload: Workload) -> str:
    """The one-line refusal of loss_norm='token' for a workload that counts no loss elements."""
    return f"loss_norm='token' needs a workload that counts loss elements; {workload.name} does not"


def check_compatible(scenario: str, workload: Workload, loss_norm: str = "mean") -> None:
    """Raise ValueError with a clear message when the scenario (with this loss normalisation)
    cannot run this workload."""
    if loss_norm == "token" and workload.count_loss_elements is None:
        raise ValueError(token_norm_unsupported(workload))
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if scenario in MULTITASK_SCENARIOS and not workload.is_multitask:
        raise ValueError(
            f"scenario {scenario} needs a multi-task workload (loss returning a dict of task losses); "
            f"{workload.name} has a single loss"
        )
    if scenario not in MULTITASK_SCENARIOS and workload.is_multitask:
        raise ValueError(
            f"scenario {scenario} needs a single-loss workload; {workload.name} has tasks "
            f"{', '.join(workload.tasks)} (use multitask-combined or multitask-sequential)"
        )
