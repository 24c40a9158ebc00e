"""Two-task workloads on the same token input: a language-model task and a classification task.

- `two-models`: two separate transformers (the textbook example). Combined loss keeps both graphs
  alive; sequential backward (forward A, backward A, forward B, backward B) holds one at a time.
- `shared-trunk`: one transformer trunk with two heads. Sequential backward must keep the trunk's
  graph for the second task (`retain_graph=True`), so it saves nothing and runs the trunk's
  backward twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from accumbench.workloads.base import Workload
from accumbench.workloads.gpt import GPT_SIZES, Block, GPTConfig, resolve_gpt_config

TASKS = ("lm", "cls")
CLASSES = 16


class Trunk(nn.Module):
    """Token and position embeddings, transformer blocks, final norm: (n, T) -> (n, T, d)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)


class TaskModel(nn.Module):
    """A trunk and one head: `lm` predicts every next token, `cls` classifies the mean state."""

    def __init__(self, cfg: GPTConfig, task: str) -> None:
        super().__init__()
        self.trunk = Trunk(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size if task == "lm" else CLASSES)
        self.task = task

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.trunk(idx)
        return self.head(h) if self.task == "lm" else self.head(h.mean(dim=1))


class TwoModels(nn.Module):
    """Two independent models on the same input; `forward(x, task)` runs one or both."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.models = nn.ModuleDict({task: TaskModel(cfg, task) for task in TASKS})

    def forward(self, idx: torch.Tensor, task: str | None = None) -> dict[str, torch.Tensor]:
        tasks = TASKS if task is None else (task,)
        return {t: self.models[t](idx) for t in tasks}


class SharedTrunk(nn.Module):
    """One trunk, two heads: both task outputs come from one trunk forward."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.trunk = Trunk(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.cls_head = nn.Linear(cfg.d_model, CLASSES)

    def forward(self, idx: torch.Tensor, task: str | None = None) -> dict[str, torch.Tensor]:
        h = self.trunk(idx)
        return {"lm": self.lm_head(h), "cls": self.cls_head(h.mean(dim=1))}


def _batch(cfg: GPTConfig):
    def make_batch(n: int, generator: torch.Generator):
        tokens = torch.randint(0, cfg.vocab_size, (n, cfg.seq_len + 1), generator=generator)
        classes = torch.randint(0, CLASSES, (n,), generator=generator)
        return tokens[:, :-1].clone(), tokens[:, 1:].clone(), classes

    return make_batch


def multitask_loss(outputs: dict[str, torch.Tensor], batch) -> dict[str, torch.Tensor]:
    """One mean cross-entropy per task present in `outputs`."""
    _, labels, classes = batch
    losses = {}
    if "lm" in outputs:
        logits = outputs["lm"].float()
        losses["lm"] = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1))
    if "cls" in outputs:
        losses["cls"] = F.cross_entropy(outputs["cls"].float(), classes)
    return losses


def _task_forward(model: nn.Module, batch, task: str | None = None):
    return model(batch[0], task=task)


def _multitask(layout: str, size: str, seq_len: int | None) -> Workload:
    cfg = resolve_gpt_config(size, seq_len, workload="two-models" if layout == "separate" else "shared-trunk")
    model_cls = TwoModels if layout == "separate" else SharedTrunk
    # As gpt's: another sequence length is another workload, and its name says so.
    length = f"-s{cfg.seq_len}" if cfg.seq_len != GPT_SIZES[size].seq_len else ""
    return Workload(
        name=("two-models" if layout == "separate" else "shared-trunk") + f"-{size}{length}",
        build_model=lambda: model_cls(cfg),
        make_batch=_batch(cfg),
        loss=multitask_loss,
        forward=_task_forward,
        tasks=TASKS,
        layout=layout,
        tokens_per_sample=cfg.seq_len,
        checkpoint_blocks="Block",  # each transformer block of each trunk
        options={"size": size, "seq_len": cfg.seq_len},
        description=f"{'two separate transformers' if layout == 'separate' else 'shared transformer trunk, two heads'}"
        f" ({cfg.n_layer}L/{cfg.d_model}d, seq {cfg.seq_len}); tasks: {', '.join(TASKS)}",
    )


def two_models(size: str = "tiny", seq_len: int | None = None) -> Workload:
    """Two separate transformers on the same tokens (LM task and classification task)."""
    return _multitask("separate", size, seq_len)


def shared_trunk(size: str = "tiny", seq_len: int | None = None) -> Workload:
    """One transformer trunk with an LM head and a classification head."""
    return _multitask("shared-trunk", size, seq_len)


__all__ = ["two_models", "shared_trunk", "GPT_SIZES"]
