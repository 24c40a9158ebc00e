"""A GPT-style decoder-only language model (nanoGPT's shape), with optional padded batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from accumbench.workloads.base import Workload, option_bool, option_int

IGNORE_INDEX = -100


@dataclass(frozen=True)
class GPTConfig:
    """Size of a GPT model; `seq_len` is both the context and the sample length."""

    n_layer: int
    n_head: int
    d_model: int
    vocab_size: int
    seq_len: int

    @property
    def approx_parameters(self) -> int:
        """Parameters with tied embeddings: 12·L·d² for the blocks plus the embeddings."""
        return 12 * self.n_layer * self.d_model**2 + (self.vocab_size + self.seq_len) * self.d_model


# Named sizes. "gpt2" is GPT-2 small (124M with tied embeddings) at sequence 512.
GPT_SIZES: dict[str, GPTConfig] = {
    "tiny": GPTConfig(n_layer=2, n_head=2, d_model=64, vocab_size=256, seq_len=32),
    "small": GPTConfig(n_layer=4, n_head=4, d_model=256, vocab_size=4096, seq_len=128),
    "gpt2": GPTConfig(n_layer=12, n_head=12, d_model=768, vocab_size=50304, seq_len=512),
}


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through `scaled_dot_product_attention` (flash on CUDA)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: attention and a 4x MLP, each with a residual."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token + position embeddings, `n_layer` blocks, final norm, LM head tied to the embedding."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as GPT-2
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def make_token_batch(cfg: GPTConfig, padded: bool):
    """Batch maker: `(tokens, labels)` of shape (n, seq_len).

    With `padded`, each sample has a random valid length in [seq_len/8, seq_len]; positions past
    it are padding whose labels are `IGNORE_INDEX`, so micro-batches carry different numbers of
    valid tokens (the case where a per-micro-batch mean loss divided by N is not the large batch's).
    """

    def make_batch(n: int, generator: torch.Generator):
        tokens = torch.randint(0, cfg.vocab_size, (n, cfg.seq_len + 1), generator=generator)
        inputs, labels = tokens[:, :-1].clone(), tokens[:, 1:].clone()
        if padded:
            low = max(1, cfg.seq_len // 8)
            lengths = torch.randint(low, cfg.seq_len + 1, (n,), generator=generator)
            pad = torch.arange(cfg.seq_len).unsqueeze(0) >= lengths.unsqueeze(1)
            inputs[pad] = 0
            labels[pad] = IGNORE_INDEX
        return inputs, labels

    return make_batch


def token_loss(logits: torch.Tensor, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the valid (non-ignored) positions of the batch."""
    _, labels = batch
    return F.cross_entropy(
        logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE_INDEX
    )


def count_valid_tokens(batch) -> int:
    """Number of label positions the loss averages over (padding excluded)."""
    return int((batch[1] != IGNORE_INDEX).sum())


def resolve_gpt_config(size: str, seq_len: int | None = None, workload: str = "gpt") -> GPTConfig:
    """The named size, with `seq_len` overridden when given (a whole number >= 1, else a
    `WorkloadError` naming the option of `workload`)."""
    if not isinstance(size, str) or size not in GPT_SIZES:
        raise ValueError(f"unknown gpt size {size!r}; choose one of {', '.join(GPT_SIZES)}")
    cfg = GPT_SIZES[size]
    if seq_len is not None:
        cfg = GPTConfig(cfg.n_layer, cfg.n_head, cfg.d_model, cfg.vocab_size,
                        option_int(workload, "seq_len", seq_len))
    return cfg


def gpt(size: str = "tiny", seq_len: int | None = None, padded: bool = False) -> Workload:
    """GPT-style LM. Options: `size` (tiny|small|gpt2), `seq_len`, `padded` (variable lengths)."""
    padded = option_bool("gpt", "padded", padded)  # 'maybe' is no boolean (it would be truthy)
    cfg = resolve_gpt_config(size, seq_len)
    # The name shows a sequence length only where it is not the size's own: seq_len=512 for gpt2
    # is the same workload, whose records must match.
    other_length = cfg.seq_len != GPT_SIZES[size].seq_len
    name = f"gpt-{size}" + (f"-s{cfg.seq_len}" if other_length else "") + ("-padded" if padded else "")
    return Workload(
        name=name,
        build_model=lambda: GPT(cfg),
        make_batch=make_token_batch(cfg, padded),
        loss=token_loss,
        tokens_per_sample=cfg.seq_len,
        count_loss_elements=count_valid_tokens,
        checkpoint_blocks="Block",  # each transformer block (attention + MLP)
        options={"size": size, "seq_len": cfg.seq_len, "padded": bool(padded)},
        description=(
            f"GPT {cfg.n_layer}L/{cfg.d_model}d/{cfg.n_head}h, vocab {cfg.vocab_size}, seq {cfg.seq_len}, "
            f"~{cfg.approx_parameters / 1e6:.1f}M params" + (", padded variable-length" if padded else "")
        ),
    )

