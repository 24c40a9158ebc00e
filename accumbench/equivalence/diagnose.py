"""The usual reasons accumulation is not the large batch, found in the model and the batches,
each with its explanation in plain words and its fix.

- BatchNorm in training mode: statistics per micro-batch (and running statistics updated N times).
- A per-micro-batch mean loss over a varying number of valid tokens, divided by N.
- Dropout, or other randomness in the forward pass: different random numbers per pass.

Each cause names a counterfactual: the same comparison with that cause switched off (BatchNorm
in eval mode, `loss_norm="token"`, dropout p=0). When the counterfactual is equivalent, the cause
is confirmed as the whole story.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

# Counterfactual keys: the comparison rerun with one cause (or every cause) switched off.
BATCHNORM_EVAL = "batchnorm-eval"
TOKEN_NORM = "token-norm"
DROPOUT_OFF = "dropout-off"
EVAL_MODE = "eval-mode"
ALL_REMOVED = "all-causes-removed"


@dataclass(frozen=True)
class Cause:
    """One diagnosed reason for a gradient difference.

    `kind` is a short tag (batchnorm, token-mean, dropout, random-forward), `summary` one line
    for tables and records, `explanation` why it breaks equivalence, `fix` what to do, and
    `counterfactual` the key of the comparison with this cause switched off (None when it cannot
    be switched off from outside the model).
    """

    kind: str
    summary: str
    explanation: str
    fix: str
    counterfactual: str | None = None


@dataclass(frozen=True)
class ModelSetting:
    """How the model runs in one comparison: as built, or with causes switched off."""

    batchnorm_eval: bool = False
    dropout_off: bool = False
    eval_mode: bool = False  # the whole model in eval mode: what training-only randomness checks


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Qualified names of the BatchNorm modules that normalise with batch statistics (every
    `_BatchNorm` subclass in training mode, or one without running statistics)."""
    return [
        name or type(model).__name__
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and (module.training or not module.track_running_stats)
    ]


def dropout_layers(model: nn.Module) -> list[str]:
    """Qualified names of the active dropout modules (`_DropoutNd` with p > 0, and
    `MultiheadAttention` with attention dropout) in training mode."""
    found = []
    for name, module in model.named_modules():
        if not module.training:
            continue
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            found.append(name or type(model).__name__)
        elif isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
            found.append(name or type(model).__name__)
    return found


def apply_setting(model: nn.Module, setting: ModelSetting) -> nn.Module:
    """Switch causes off in place: BatchNorm to eval mode (running statistics, per sample);
    dropout probability to 0; the whole model to eval mode (functional dropout and stochastic
    depth draw only in training). Returns the model."""
    if setting.eval_mode:
        model.eval()
    if setting.batchnorm_eval:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                # Eval mode only normalises with the running statistics if it has them.
                if module.track_running_stats:
                    module.eval()
    if setting.dropout_off:
        for module in model.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.p = 0.0
            elif isinstance(module, nn.MultiheadAttention):
                module.dropout = 0.0
    return model


def running_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """Running mean and variance of every BatchNorm module, by buffer name."""
    stats = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buffer in ("running_mean", "running_var"):
                value = getattr(module, buffer, None)
                if value is not None:
                    stats[f"{name}.{buffer}" if name else buffer] = value.detach().clone()
    return stats


def _names(layers: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(layers[:limit])
    return shown + (f" and {len(layers) - limit} more" if len(layers) > limit else "")


def batchnorm_eval_applies(model: nn.Module) -> bool:
    """Whether eval mode changes a BatchNorm layer of the model: only one that keeps running
    statistics then normalises with them (one without normalises by the batch either way)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def batchnorm_cause(layers: Sequence[str], switchable: bool = True, recomputed: Sequence[str] = ()) -> Cause:
    """BatchNorm normalises each micro-batch with its own statistics; `switchable`: some layer
    keeps running statistics, so eval mode is the counterfactual (else there is none);
    `recomputed`: the layers activation checkpointing runs again in the backward."""
    again = (f" With activation checkpointing, {_names(recomputed)} run their forward again in the backward "
             "and update the running statistics a second time: 2N updates per optimizer step, also "
             "without accumulation (N = 1).") if recomputed else ""
    return Cause(
        kind="batchnorm",
        summary=f"BatchNorm ({_names(layers)}): statistics per micro-batch",
        explanation=(
            "BatchNorm normalises each micro-batch with that micro-batch's own mean and variance, so N "
            "micro-batches are not one large batch: every sample's output, and so every gradient, depends "
            "on which samples share its micro-batch. The running statistics are also updated N times "
            "(momentum applied each time) from smaller samples, instead of once from the large batch."
            + again
        ),
        fix=(
            "use a normalisation with per-sample statistics (GroupNorm, LayerNorm), or compute the "
            "statistics over the whole effective batch (SyncBatchNorm-style, across the micro-batches), "
            "or use micro-batches large enough that their statistics are stable; frozen BatchNorm "
            "(eval mode, as in fine-tuning) accumulates exactly"
            + ("; keep BatchNorm layers out of the checkpointed modules" if recomputed else "")
        ),
        counterfactual=BATCHNORM_EVAL if switchable else None,
    )


def is_hf_model(model: nn.Module) -> bool:
    """True for a Hugging Face transformers model (a `PreTrainedModel` subclass), found by its
    class hierarchy so that transformers need not be imported."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
               for c in type(model).__mro__)


def loss_takes_num_items(model: nn.Module, batch: dict) -> bool:
    """Does this Hugging Face model's own loss divide by a `num_items_in_batch` it is given?
    Causal LMs' losses do (transformers' `ForCausalLMLoss`); many heads compute a mean
    cross-entropy in their forward and ignore it (in transformers 5.24: BERT's and RoBERTa's
    masked-LM and token-classification heads, Llama's token classification, T5, BART). Found by
    asking: the loss with counts 1 and 2 (in eval mode, so dropout draws nothing) differs only
    if it divides."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            losses = [model(**batch, num_items_in_batch=count).loss for count in (1, 2)]
    except TypeError:  # a forward that takes no such argument
        return False
    finally:
        model.train(was_training)
    return all(loss is not None for loss in losses) and not torch.equal(losses[0], losses[1])


def token_mean_cause(counts: Sequence[int], hf_model: bool = False, num_items_honoured: bool = True) -> Cause:
    """A mean loss per micro-batch over different numbers of valid tokens, divided by N; for a
    Hugging Face model, named as HF Trainer's accumulation bug and its `num_items_in_batch` fix,
    or (`num_items_honoured` False: the model's loss ignores that count) the loss to compute
    instead."""
    total = sum(counts)
    shown = ", ".join(str(c) for c in counts[:8]) + (", ..." if len(counts) > 8 else "")
    explanation = (
        "Each micro-batch's loss is the mean over its own valid (non-padding) tokens, then divided by "
        "N: a token in a micro-batch with few valid tokens weighs more than one in a full micro-batch. "
        f"The large batch averages over all its tokens at once, every token weighing the same (at "
        f"N={len(counts)}: {shown} valid tokens per micro-batch, {total} in all)."
    )
    fix = ("sum the per-token losses and divide by the effective batch's total valid-token count: "
           "`--loss-norm token` (each micro-batch loss x count_i / total)")
    summary = (f"mean loss per micro-batch over varying valid tokens ({min(counts)} to {max(counts)}), "
               "divided by N")
    if hf_model:
        summary += " (HF Trainer without num_items_in_batch)"
        explanation += (
            " This is Hugging Face Trainer's gradient-accumulation bug: the model's own loss (labels "
            "!= -100, shifted by one for causal LMs) is a per-micro-batch mean over a varying number of "
            "valid tokens, and Trainer divided it by the accumulation steps (fixed in transformers 4.46"
            + (")." if num_items_honoured else " for the models whose loss takes `num_items_in_batch`; this "
               "one's does not).")
        )
        fix = ("pass `num_items_in_batch` (the accumulation window's total count of labels != -100, after "
               "the causal shift) to the model's loss, `model(**batch, num_items_in_batch=total)`, which "
               "sums the per-token losses and divides by it, as Trainer does since transformers 4.46; that "
               "is normalising by the window's total valid tokens: `--loss-norm token` here")
        if not num_items_honoured:
            fix = ("this model's own loss ignores `num_items_in_batch` (its forward takes the mean "
                   "cross-entropy itself; called with two different counts, it returned the same loss), so "
                   "passing the count changes nothing: compute the loss from the logits, the per-token "
                   "cross-entropies over labels != -100 summed and divided by the accumulation window's total "
                   "count (with Trainer: a `compute_loss_func`, which receives that count as "
                   "`num_items_in_batch`): `--loss-norm token` here")
    return Cause(kind="token-mean", summary=summary, explanation=explanation, fix=fix,
                 counterfactual=TOKEN_NORM)


def dropout_cause(layers: Sequence[str]) -> Cause:
    """Dropout draws different masks in the large batch and in the micro-batches."""
    return Cause(
        kind="dropout",
        summary=f"dropout ({_names(layers)}): different random masks",
        explanation=(
            "Dropout draws a fresh random mask in every forward pass; the large batch and the "
            "micro-batches draw different masks, so their gradients differ sample by sample and agree "
            "only in expectation. This is noise, not a flaw of the accumulation."
        ),
        fix="nothing to fix for training; to check the accumulation itself, compare with dropout off "
            "(done here)",
        counterfactual=DROPOUT_OFF,
    )


def random_forward_cause(eval_mode_deterministic: bool = False) -> Cause:
    """The forward pass draws random numbers that no module setting switches off; when eval
    mode makes it deterministic (functional dropout and stochastic depth draw only in training),
    eval mode is the counterfactual: without one, the randomness would hide any other cause."""
    return Cause(
        kind="random-forward",
        summary="random forward pass (not a dropout module)",
        explanation=(
            "The same large batch run twice with different random seeds gives different gradients, "
            "so the forward pass draws random numbers (functional dropout, stochastic depth, noise); "
            "the large batch and the micro-batches draw different ones."
        ),
        fix="make the forward deterministic for the check (a flag that turns the randomness off), "
            "then check again",
        counterfactual=EVAL_MODE if eval_mode_deterministic else None,
    )


CAUSE_LABELS: dict[str, str] = {
    "batchnorm": "BatchNorm",
    "token-mean": "mean loss / N over varying tokens",
    "dropout": "dropout",
    "random-forward": "random forward",
}
