"""A small mixture-of-experts language model with a per-expert loop (routing decides sizes),
whose router can be forced to a known routing: `route=balanced` or `route=worst` add a large bias
that makes the real top-k pick exactly what the estimate's `moe_routing` assumption of that name
picks, `route=learned` leaves the router alone."""

import torch
import torch.nn.functional as F
from torch import nn

from accumbench import Workload

VOCAB, SEQ = 64, 8


class ToyMoE(nn.Module):
    def __init__(self, dim: int = 16, experts: int = 4, k: int = 2, route: str = "learned",
                 separate: bool = False) -> None:
        super().__init__()
        self.experts, self.k, self.route = experts, k, route
        self.embed = nn.Embedding(VOCAB, dim)
        self.router = nn.Linear(dim, experts, bias=False)
        w_in, w_out = torch.randn(experts, dim, 32) * 0.1, torch.randn(experts, 32, dim) * 0.1
        if separate:  # one parameter per expert: an expert no token reaches gets no gradient
            self.w_in, self.w_out = nn.ParameterList(w_in.unbind()), nn.ParameterList(w_out.unbind())
        else:
            self.w_in, self.w_out = nn.Parameter(w_in), nn.Parameter(w_out)
        self.head = nn.Linear(dim, VOCAB)

    def forced(self, tokens: int) -> torch.Tensor:
        """A bias that makes token t's j-th choice the expert the assumption names."""
        j = torch.arange(self.k)
        chosen = j.expand(tokens, self.k) if self.route == "worst" else \
            (torch.arange(tokens)[:, None] * self.k + j) % self.experts
        return torch.zeros(tokens, self.experts).scatter(1, chosen, (self.k - j).float().expand(tokens, self.k))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids).reshape(-1, self.embed.embedding_dim)
        logits = self.router(h)
        if self.route != "learned":
            logits = logits + 100.0 * self.forced(h.shape[0])
        top, index = torch.topk(logits, self.k, dim=-1)
        weights = top.softmax(-1)
        out = torch.zeros_like(h)
        for expert in range(self.experts):
            token, slot = torch.where(index == expert)
            if token.numel() == 0:
                continue
            y = (h[token] @ self.w_in[expert]).relu() @ self.w_out[expert]
            out = out.index_add(0, token, y * weights[token, slot, None])
        return self.head(out).reshape(*ids.shape, VOCAB)


def build(route: str = "learned", separate: bool = False) -> Workload:
    def make_batch(n, g):
        ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
        return ids, ids

    return Workload(
        name=f"toy-moe-{route}",
        build_model=lambda: ToyMoE(route=route, separate=separate),
        make_batch=make_batch,
        loss=lambda logits, batch: F.cross_entropy(logits.reshape(-1, VOCAB), batch[1].reshape(-1)),
        tokens_per_sample=SEQ,
        options={"route": route, "separate": separate},
    )


class ReadsActivations(nn.Module):
    """Branches on an activation's value: the estimate cannot know it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        return y * 2 if y.sum().item() > 0 else y


def reads_activations() -> Workload:
    return Workload(
        name="reads-activations",
        build_model=ReadsActivations,
        make_batch=lambda n, g: (torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)),
        loss=lambda out, batch: F.mse_loss(out, batch[1]),
    )
