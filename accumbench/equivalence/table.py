"""Check results for a terminal: a table (one row per workload, N, loss normalisation) and a
diagnosis in plain words (what differs, why, how to fix it, and the evidence)."""

from __future__ import annotations

import textwrap
from typing import Iterable, Sequence

from accumbench.equivalence.check import EquivalenceResult
from accumbench.textfmt import text_table
from accumbench.equivalence.diagnose import (ALL_REMOVED, BATCHNORM_EVAL, CAUSE_LABELS, DROPOUT_OFF, EVAL_MODE,
                                             TOKEN_NORM)

WIDTH = 100
COUNTERFACTUAL_TEXT = {
    BATCHNORM_EVAL: "with BatchNorm in eval mode (running statistics)",
    TOKEN_NORM: "with --loss-norm token",
    DROPOUT_OFF: "with dropout off",
    EVAL_MODE: "with the model in eval mode (what draws only in training off)",
    ALL_REMOVED: "with every cause above switched off",
}


def format_error(value: float | None) -> str:
    """A relative error: percent from 0.1% up, scientific notation below."""
    if value is None:
        return "-"
    if value != value or value == float("inf"):
        return str(value)
    if value == 0:
        return "0"
    return f"{value:.1%}" if value >= 1e-3 else f"{value:.1e}"


def _span(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return format_error(low) if format_error(low) == format_error(high) else f"{format_error(low)} to {format_error(high)}"


def verdict_text(result: EquivalenceResult) -> str:
    """'equivalent', 'NOT equivalent', or 'NOT equivalent, unexplained' (no known cause)."""
    if result.equivalent:
        return "equivalent"
    return "NOT equivalent" if result.explained else "NOT equivalent, unexplained"


def format_table(results: Sequence[EquivalenceResult]) -> str:
    """The results as an aligned text table: workload, N, loss norm, relative error, verdict,
    optimizer update errors (SGD, AdamW) and the causes found."""
    header = ("workload", "N", "loss norm", "rel error", "verdict", "SGD step", "AdamW step", "cause")
    rows = []
    for r in results:
        causes = ", ".join(CAUSE_LABELS.get(c.kind, c.kind) for c in r.causes) or "-"
        rows.append((r.workload, str(r.accum_steps), r.loss_norm, format_error(r.rel_error), verdict_text(r),
                     format_error(r.optimizer_step.get("sgd")), format_error(r.optimizer_step.get("adamw")), causes))
    return text_table(header, rows, right=(1, 3, 5, 6))


def format_header(results: Sequence[EquivalenceResult]) -> str:
    """What was compared, in which dtype, against which tolerance."""
    if not results:
        return "no results"
    first = results[0]
    n = first.micro_batch
    return (f"Gradients of N micro-batches of {n} (accumulated) vs one batch of {n}xN, same samples, same "
            f"initial weights; {first.dtype} on the CPU, deterministic. rel error = |g_acc - g_large| / "
            f"|g_large| over all parameters; equivalent when <= {first.tolerance:.0e}.")


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False)


def _group(results: Iterable[EquivalenceResult]) -> dict[str, list[EquivalenceResult]]:
    groups: dict[str, list[EquivalenceResult]] = {}
    for r in results:
        groups.setdefault(r.workload, []).append(r)
    return groups


def format_diagnosis(results: Sequence[EquivalenceResult]) -> str:
    """Per workload that is not equivalent somewhere: each cause (what, why, fix) with the
    evidence (the error with the cause switched off, BatchNorm running-statistics drift) and
    the worst parameters; or, with no known cause, what to look at."""
    lines: list[str] = []
    for workload, group in _group(results).items():
        bad = [r for r in group if not r.equivalent]
        if not bad:
            continue
        settings = ", ".join(f"N={r.accum_steps} {r.loss_norm}" for r in bad)
        lines.append(f"{workload}: not equivalent ({_span([r.rel_error for r in bad])}; {settings})")
        seen: dict[str, list[EquivalenceResult]] = {}
        for r in bad:
            for cause in r.causes:
                seen.setdefault(cause.kind, []).append(r)
        for kind, affected in seen.items():
            cause = next(c for c in affected[-1].causes if c.kind == kind)
            lines += _wrap(f"cause: {cause.summary}", "  ")
            lines += _wrap(f"why: {cause.explanation}", "    ")
            lines += _wrap(f"fix: {cause.fix}", "    ")
            if cause.counterfactual:
                pairs = [(r.counterfactuals[cause.counterfactual], r.tolerance) for r in affected
                         if cause.counterfactual in r.counterfactuals]
                errors = [e for e, _ in pairs]
                if errors:
                    fixed = all(e <= tol for e, tol in pairs)
                    lines += _wrap(f"evidence: {COUNTERFACTUAL_TEXT[cause.counterfactual]} the error is "
                                   f"{_span(errors)} ({'equivalent' if fixed else 'still not equivalent'}).",
                                   "    ")
            if kind == "batchnorm":
                drift = [r.running_stats_drift for r in affected if r.running_stats_drift is not None]
                if drift:
                    lines += _wrap(f"running statistics after the step differ from the large batch's by "
                                   f"{_span(drift)} (relative, running_mean and running_var together).", "    ")
        removed = [r.counterfactuals[ALL_REMOVED] for r in bad if ALL_REMOVED in r.counterfactuals]
        if removed:
            lines += _wrap(f"{COUNTERFACTUAL_TEXT[ALL_REMOVED]} the error is {_span(removed)}.", "  ")
        if any(not r.explained for r in bad):
            lines += _wrap(
                "no known cause explains the difference (no BatchNorm, no varying loss elements among those "
                "the workload counts, no randomness found, or switching them off does not help): look for a "
                "layer that mixes samples of a batch, a loss whose denominator depends on the batch, or state "
                "kept between forward calls.", "  ")
        worst = max(bad, key=lambda r: r.rel_error)
        names = ", ".join(f"{name} {format_error(err)}" for name, err in worst.worst_parameters)
        lines += _wrap(f"worst parameters (N={worst.accum_steps}, {worst.loss_norm}): {names}", "  ")
    return "\n".join(lines)


def format_notes(results: Sequence[EquivalenceResult]) -> str:
    """The optimizer step and the GradScaler window, summarised over all results."""
    lines: list[str] = []
    sgd = [r.optimizer_step["sgd"] for r in results if r.equivalent and "sgd" in r.optimizer_step]
    adamw = [r.optimizer_step["adamw"] for r in results if r.equivalent and "adamw" in r.optimizer_step]
    momentum = [r.optimizer_step["sgd-momentum"] for r in results if r.equivalent and "sgd-momentum" in r.optimizer_step]
    if sgd or adamw:
        parts = []
        if sgd:
            parts.append(f"SGD {format_error(max(sgd))}")
        if momentum:
            parts.append(f"SGD with momentum (2 steps) {format_error(max(momentum))}")
        if adamw:
            parts.append(f"AdamW {format_error(max(adamw))}")
        lines += _wrap(
            "optimizer step: where the gradients are equivalent, the parameter update after the accumulated "
            f"step differs from the large batch's by at most {', '.join(parts)} (relative). AdamW divides each "
            "element's step by its gradient's magnitude (the first step is about lr*sign(g)), so rounding-level "
            "gradient differences on near-zero gradients can move its update more than SGD's; where the "
            "gradients differ, the updates differ about as much (see the table).", "")
    changed = [r.grad_scaler["scale_changed_inside_window"] for r in results
               if "scale_changed_inside_window" in r.grad_scaler]
    once = [r.grad_scaler["scale_once_per_window"] for r in results if "scale_once_per_window" in r.grad_scaler]
    if changed and once:
        lines += _wrap(
            "GradScaler (fp16): accumbench's fp16 path updates the scale once per optimizer step, after the "
            f"accumulation window; under a scaler its accumulated gradients differ from the unscaled ones by "
            f"{_span(once)}. A scale that changes inside the window (scaler.update() between micro-batches) "
            f"divides gradients made at different scales by the last one: {_span(changed)} error on these "
            "workloads. Call scaler.update() once per optimizer step.", "")
    return "\n".join(lines)


__all__ = ["format_diagnosis", "format_error", "format_header", "format_notes", "format_table",
           "verdict_text"]
