"""The check: gradients of one large batch vs the same samples as N micro-batches, with the
diagnosis of why they differ, the optimizer step and the GradScaler window.

For each accumulation count N it makes one batch of n·N samples (seeded), splits it into N
micro-batches, builds the model once (seeded) and runs every comparison from a deep copy of it,
so both sides start from identical weights and see identical samples.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from accumbench.equivalence.batches import cast_floating, split_batch
from accumbench.equivalence.diagnose import (
    ALL_REMOVED,
    BATCHNORM_EVAL,
    DROPOUT_OFF,
    EVAL_MODE,
    TOKEN_NORM,
    Cause,
    ModelSetting,
    apply_setting,
    batchnorm_cause,
    batchnorm_eval_applies,
    batchnorm_layers,
    dropout_cause,
    dropout_layers,
    is_hf_model,
    loss_takes_num_items,
    random_forward_cause,
    running_stats,
    token_mean_cause,
)
from accumbench.equivalence.grad_scaler import grad_scaler_errors
from accumbench.equivalence.gradients import (
    ACCUMULATED_SEED_OFFSET,
    GradientComparison,
    compare_tensors,
    step_gradients,
)
from accumbench.equivalence.optimizer_step import update_errors
from accumbench.equivalence.precision import DTYPES, TOLERANCES, deterministic, keep_float64
from accumbench.levers import checkpointed_modules
from accumbench.scenarios import LOSS_NORMS, loss_weights
from accumbench.workloads.base import Workload, seed_host_generators

LOSS_NORM_CHOICES = (*LOSS_NORMS, "both")
DEFAULT_ACCUM_STEPS = (2, 4, 8)
DEFAULT_MICRO_BATCH = 4
EQUIVALENT, NOT_EQUIVALENT = "equivalent", "not-equivalent"


@dataclass(frozen=True)
class CheckConfig:
    """What to check: accumulation counts N, micro-batch n, loss normalisations ("mean",
    "token" or "both": token where the workload counts loss elements), dtype, seed, how many
    worst parameters to name, and whether to run the optimizer-step and GradScaler checks."""

    accum_steps: tuple[int, ...] = DEFAULT_ACCUM_STEPS
    micro_batch: int = DEFAULT_MICRO_BATCH
    loss_norm: str = "both"
    dtype: str = "float64"
    seed: int = 0
    top_k: int = 3
    optimizer_step: bool = True
    grad_scaler: bool = True

    def __post_init__(self) -> None:
        if self.loss_norm not in LOSS_NORM_CHOICES:
            raise ValueError(f"loss_norm must be one of {', '.join(LOSS_NORM_CHOICES)}, got {self.loss_norm!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.micro_batch < 1 or not self.accum_steps or any(n < 1 for n in self.accum_steps):
            raise ValueError("micro_batch and accum_steps must be positive integers")

    @property
    def tolerance(self) -> float:
        """The relative error under which the verdict is 'equivalent', for this dtype."""
        return TOLERANCES[self.dtype]


@dataclass(frozen=True)
class EquivalenceResult:
    """One (workload, N, loss normalisation) comparison and its diagnosis.

    `rel_error` is ‖g_acc − g_large‖ / ‖g_large‖ over every parameter; `counterfactuals` the same
    error with a cause switched off (keys from `diagnose`); `optimizer_step` the relative error of
    each optimizer's parameter update; `running_stats_drift` that of the BatchNorm running
    statistics after the step (None without BatchNorm); `grad_scaler` the gradient error under a
    GradScaler, against the same accumulated step without one, with the scale fixed for the
    window (accumbench's fp16 path) vs changed inside it.
    """

    workload: str
    workload_options: dict[str, Any]
    micro_batch: int
    accum_steps: int
    loss_norm: str
    dtype: str
    tolerance: float
    rel_error: float
    worst_parameters: tuple[tuple[str, float], ...]
    causes: tuple[Cause, ...] = ()
    counterfactuals: dict[str, float] = field(default_factory=dict)
    optimizer_step: dict[str, float] = field(default_factory=dict)
    running_stats_drift: float | None = None
    batchnorm_layers: tuple[str, ...] = ()
    dropout_layers: tuple[str, ...] = ()
    random_forward: bool = False
    loss_elements: tuple[int, ...] | None = None
    grad_scaler: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    @property
    def equivalent(self) -> bool:
        """True when the relative error is within the dtype's tolerance."""
        return self.rel_error <= self.tolerance

    @property
    def verdict(self) -> str:
        """'equivalent' or 'not-equivalent'."""
        return EQUIVALENT if self.equivalent else NOT_EQUIVALENT

    @property
    def causes_removed_error(self) -> float | None:
        """The error with every cause that can be switched off switched off (None: none can)."""
        if ALL_REMOVED in self.counterfactuals:
            return self.counterfactuals[ALL_REMOVED]
        keys = [c.counterfactual for c in self.causes if c.counterfactual in self.counterfactuals]
        return self.counterfactuals[keys[0]] if len(keys) == 1 else None

    @property
    def explained(self) -> bool:
        """Equivalent, or not for a diagnosed reason: switching the causes off makes it
        equivalent, or a cause cannot be switched off from outside (a random forward that eval
        mode does not make deterministic, BatchNorm without running statistics)."""
        if self.equivalent:
            return True
        if not self.causes:
            return False
        if any(c.counterfactual is None for c in self.causes):
            return True
        removed = self.causes_removed_error
        return removed is not None and removed <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        """The record's `equivalence` block (JSON-ready)."""
        return {
            "rel_error": self.rel_error,
            "verdict": self.verdict,
            "tolerance": self.tolerance,
            "accum_steps": self.accum_steps,
            "micro_batch": self.micro_batch,
            "dtype": self.dtype,
            "loss_norm": self.loss_norm,
            "worst_parameters": [[name, err] for name, err in self.worst_parameters],
            "causes": [c.summary for c in self.causes],
            "cause_kinds": [c.kind for c in self.causes],
            "explained": self.explained,
            "counterfactuals": dict(self.counterfactuals),
            "optimizer_step": dict(self.optimizer_step),
            "running_stats_drift": self.running_stats_drift,
            "batchnorm_layers": list(self.batchnorm_layers),
            "dropout_layers": list(self.dropout_layers),
            "random_forward": self.random_forward,
            "loss_elements": list(self.loss_elements) if self.loss_elements is not None else None,
            "grad_scaler": dict(self.grad_scaler),
            "seed": self.seed,
        }


def loss_norms_for(workload: Workload, loss_norm: str) -> tuple[str, ...]:
    """The normalisations to check: "both" means mean and token where the workload counts its
    loss elements (mean only otherwise). Raises ValueError for "token" without a count."""
    counts = workload.count_loss_elements is not None
    if loss_norm == "both":
        return ("mean", "token") if counts else ("mean",)
    if loss_norm == "token" and not counts:
        raise ValueError(
            f"--loss-norm token needs a workload that counts its loss elements (count_loss_elements); "
            f"{workload.name} does not"
        )
    return (loss_norm,)


@dataclass(frozen=True)
class _Run:
    grads: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]


AS_IS = ModelSetting()


class _Probe:
    """Runs (and caches) the gradient steps of one batch split, from copies of one model."""

    def __init__(self, workload: Workload, model: nn.Module, large_batch: Any, micro_batches: Sequence[Any],
                 seed: int) -> None:
        self.workload = workload
        self.model = model
        self.large_batch = large_batch
        self.micro_batches = list(micro_batches)
        self.seed = seed
        self._runs: dict[tuple, _Run] = {}

    def weights(self, loss_norm: str) -> list[float]:
        return loss_weights(self.workload, self.micro_batches, loss_norm)

    def _run(self, setting: ModelSetting, batches: list[Any], weights: list[float], loss_norm: str,
             seed: int) -> _Run:
        model = apply_setting(copy.deepcopy(self.model), setting)
        seed_host_generators(seed)  # reproducible random draws (dropout) in every run
        grads = step_gradients(self.workload, model, batches, weights, loss_norm)
        return _Run(grads, running_stats(model))

    def large(self, setting: ModelSetting, seed_offset: int = 0) -> _Run:
        key = ("large", setting, seed_offset)
        if key not in self._runs:
            self._runs[key] = self._run(setting, [self.large_batch], [1.0], "mean", self.seed + seed_offset)
        return self._runs[key]

    def accumulated(self, setting: ModelSetting, loss_norm: str) -> _Run:
        key = ("accumulated", setting, loss_norm)
        if key not in self._runs:
            self._runs[key] = self._run(setting, self.micro_batches, self.weights(loss_norm), loss_norm,
                                        self.seed + ACCUMULATED_SEED_OFFSET)
        return self._runs[key]

    def compare(self, setting: ModelSetting, loss_norm: str) -> GradientComparison:
        return compare_tensors(self.accumulated(setting, loss_norm).grads, self.large(setting).grads)

    def is_random(self, setting: ModelSetting, tolerance: float) -> bool:
        """Do two large-batch runs with different seeds give different gradients?"""
        return compare_tensors(self.large(setting, 1).grads, self.large(setting).grads).rel_error > tolerance


def _diagnose(probe: _Probe, loss_norm: str, bn: list[str], dropout: list[str], random_rest: bool,
              counts: list[int] | None, hf_model: bool = False, tolerance: float = 0.0
              ) -> tuple[list[Cause], dict[str, float]]:
    """The causes that apply to this comparison and the error with each switched off."""
    causes: list[Cause] = []
    counterfactuals: dict[str, float] = {}
    token_cause = loss_norm == "mean" and counts is not None and len(set(counts)) > 1
    if bn:
        switchable = batchnorm_eval_applies(probe.model)
        checkpointed = checkpointed_modules(probe.model)
        recomputed = [name for name in bn if any(name == c or name.startswith(c + ".") for c in checkpointed)]
        causes.append(batchnorm_cause(bn, switchable, recomputed))
        if switchable:
            counterfactuals[BATCHNORM_EVAL] = probe.compare(ModelSetting(batchnorm_eval=True), loss_norm).rel_error
    if token_cause:
        honoured = not hf_model or not isinstance(probe.micro_batches[0], dict) or \
            loss_takes_num_items(probe.model, probe.micro_batches[0])
        causes.append(token_mean_cause(counts, hf_model, honoured))
        counterfactuals[TOKEN_NORM] = probe.compare(AS_IS, "token").rel_error
    if dropout:
        causes.append(dropout_cause(dropout))
        counterfactuals[DROPOUT_OFF] = probe.compare(ModelSetting(dropout_off=True), loss_norm).rel_error
    eval_mode = False
    if random_rest:
        # Randomness hides any other difference (a loss that mixes the samples of a micro-batch
        # behind functional dropout): it explains the difference only where switching it off
        # shows that, and eval mode switches off what draws only in training.
        eval_mode = not probe.is_random(ModelSetting(eval_mode=True), tolerance)
        causes.append(random_forward_cause(eval_mode))
        if eval_mode:
            counterfactuals[EVAL_MODE] = probe.compare(ModelSetting(eval_mode=True), loss_norm).rel_error
    if len(counterfactuals) > 1:
        everything_off = ModelSetting(batchnorm_eval=bool(bn), dropout_off=bool(dropout), eval_mode=eval_mode)
        counterfactuals[ALL_REMOVED] = probe.compare(everything_off, "token" if token_cause else loss_norm).rel_error
    return causes, counterfactuals


def check_workload(workload: Workload, config: CheckConfig | None = None) -> list[EquivalenceResult]:
    """Compare accumulated and large-batch gradients of a workload for every N and loss
    normalisation in `config`, diagnose the differences, check the optimizer step.

    Runs on the CPU in `config.dtype`, deterministic algorithms on, model in train mode.
    Raises ValueError for a configuration the workload cannot run (token norm without counts, a
    batch that does not split); whatever the workload's own code raises propagates.
    """
    config = config or CheckConfig()
    norms = loss_norms_for(workload, config.loss_norm)
    dtype = DTYPES[config.dtype]
    name = workload.name
    if config.dtype == "float64":
        workload = keep_float64(workload)
    results: list[EquivalenceResult] = []
    with deterministic():
        seed_host_generators(config.seed)
        model = workload.build_model().to(dtype).train()
        bn = batchnorm_layers(model)
        dropout = dropout_layers(model)
        for accum_steps in config.accum_steps:
            generator = torch.Generator().manual_seed(config.seed)
            large_batch = cast_floating(workload.make_batch(config.micro_batch * accum_steps, generator), dtype)
            micro_batches = split_batch(large_batch, accum_steps)
            probe = _Probe(workload, model, large_batch, micro_batches, config.seed)
            if not all(torch.isfinite(g).all() for g in probe.large(AS_IS).grads.values()):
                # Said before any check runs on them (the GradScaler's would blame itself).
                raise ValueError(f"the large batch's gradients are not finite (nan or inf) in {config.dtype}, "
                                 "without any GradScaler: the batch or the loss makes them so")
            random_as_is = probe.is_random(AS_IS, config.tolerance)
            # Randomness left once dropout modules are off: something else in forward draws numbers.
            random_rest = probe.is_random(ModelSetting(dropout_off=True), config.tolerance) if dropout else random_as_is
            counts = ([workload.count_loss_elements(b) for b in micro_batches]
                      if workload.count_loss_elements is not None else None)
            scaler = {}
            if config.grad_scaler:
                scaler = grad_scaler_errors(workload, model, micro_batches, probe.weights(norms[0]), norms[0],
                                            probe.accumulated(AS_IS, norms[0]).grads,
                                            config.seed + ACCUMULATED_SEED_OFFSET)
            optimizer_errors = (
                update_errors(workload, model, large_batch, micro_batches,
                              {norm: probe.weights(norm) for norm in norms}, config.seed)
                if config.optimizer_step else {norm: {} for norm in norms}
            )
            for loss_norm in norms:
                comparison = probe.compare(AS_IS, loss_norm)
                # Causes explain a difference: an equivalent result has none to explain.
                causes, counterfactuals = ([], {}) if comparison.rel_error <= config.tolerance else \
                    _diagnose(probe, loss_norm, bn, dropout, random_rest, counts, is_hf_model(model), config.tolerance)
                drift = None
                if bn:
                    drift = compare_tensors(probe.accumulated(AS_IS, loss_norm).stats, probe.large(AS_IS).stats).rel_error
                results.append(EquivalenceResult(
                    workload=name,
                    workload_options=dict(workload.options),
                    micro_batch=config.micro_batch,
                    accum_steps=accum_steps,
                    loss_norm=loss_norm,
                    dtype=config.dtype,
                    tolerance=config.tolerance,
                    rel_error=comparison.rel_error,
                    worst_parameters=tuple(comparison.worst(config.top_k)),
                    causes=tuple(causes),
                    counterfactuals=counterfactuals,
                    optimizer_step=optimizer_errors[loss_norm],
                    running_stats_drift=drift,
                    batchnorm_layers=tuple(bn),
                    dropout_layers=tuple(dropout),
                    random_forward=random_as_is,
                    loss_elements=tuple(counts) if counts is not None else None,
                    grad_scaler=scaler,
                    seed=config.seed,
                ))
    return results
