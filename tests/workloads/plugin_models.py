"""Plug-in workloads for the tests: loaded by path, as a user's file would be."""

import torch
import torch.nn.functional as F
from torch import nn

from accumbench import Workload


def _batch(n, generator):
    return torch.randn(n, 16, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def single() -> Workload:
    """A one-loss plug-in: a small MLP classifier."""
    return Workload(
        name="plugin-mlp",
        build_model=lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)),
        make_batch=_batch,
        loss=lambda out, batch: F.cross_entropy(out, batch[1]),
    )


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.b = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x, task=None):
        tasks = ("a", "b") if task is None else (task,)
        return {t: getattr(self, t)(x) for t in tasks}


def _two_losses(out, batch):
    losses = {}
    if "a" in out:
        losses["a"] = F.cross_entropy(out["a"], batch[1])
    if "b" in out:
        losses["b"] = out["b"].pow(2).mean()
    return losses


def multitask() -> Workload:
    """A two-task plug-in with separate models, honouring `task` in forward."""
    return Workload(
        name="plugin-two-heads",
        build_model=_TwoHeads,
        make_batch=_batch,
        loss=_two_losses,
        forward=lambda model, batch, task=None: model(batch[0], task=task),
        tasks=("a", "b"),
        layout="separate",
    )


def sgd() -> Workload:
    """The single plug-in with plain SGD: the record must name it."""
    w = single()
    return Workload(**{**w.__dict__, "name": "plugin-mlp-sgd",
                       "build_optimizer": lambda params: torch.optim.SGD(params, lr=0.1, foreach=True)})


def _sgd_for_the_whole_model(params):
    params = list(params)
    if len(params) < 4:  # a factory that checks it got the model it was written for
        raise ValueError(f"expected the model's 4 parameters, got {len(params)}")
    return torch.optim.SGD(params, lr=0.1, foreach=True)


def strict_optimizer() -> Workload:
    """The single plug-in whose optimizer factory refuses any other model's parameters."""
    return Workload(**{**single().__dict__, "name": "plugin-mlp-strict", "build_optimizer": _sgd_for_the_whole_model})


def broken_optimizer() -> Workload:
    """The single plug-in whose optimizer factory always fails."""
    return Workload(**{**single().__dict__, "name": "plugin-mlp-broken",
                       "build_optimizer": lambda params: torch.optim.SGD(params, lr=-1.0)})


class _Cached(nn.Module):
    """Keeps a tensor as a plain attribute, replaced by every forward: it lives between steps."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.cache = None

    def forward(self, x):
        self.cache = torch.ones(1024, 16)  # the previous step's cache is freed only here
        return self.body(x + self.cache[: x.shape[0]])


def cached() -> Workload:
    """The single plug-in with a module attribute holding a tensor between steps."""
    return Workload(**{**single().__dict__, "name": "plugin-mlp-cached", "build_model": _Cached})


def not_a_workload():
    return 42


def raises():
    raise RuntimeError("boom in factory")


class _Exploding(nn.Module):
    """Raises a CUDA-style OOM on a large batch: OOM handling tested without a GPU."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 4)

    def forward(self, x):
        if x.shape[0] > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (fake)")
        return self.lin(x)


def oom_above_8() -> Workload:
    """OOMs (fake) for batches above 8 samples."""
    return Workload(name="plugin-oom", build_model=_Exploding, make_batch=_batch,
                    loss=lambda out, batch: F.cross_entropy(out, batch[1]))


def build_raises() -> Workload:
    """The single plug-in whose build_model raises: refused (exit 2) where a command builds the
    model to check it (check, levers), never a traceback."""
    return Workload(**{**single().__dict__, "name": "plugin-mlp-build-raises", "build_model": lambda: 1 / 0})


class _TiedEncoder(nn.Module):
    """Token classifier over torch's own TransformerEncoder, head tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        # TransformerEncoder deep-copies its layer for each of its layers.
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)))


def _tokens(n, generator):
    tokens = torch.randint(0, 50, (n, 12), generator=generator)
    return tokens, tokens


def torch_encoder(bf16: bool = True) -> Workload:
    """Deep-copied layers (nn.TransformerEncoder), a tied head and, with `bf16`, the whole model
    converted with `.to(torch.bfloat16)` in build_model: what the estimate's fake tensors must
    copy and convert as real ones are."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    return Workload(name=f"plugin-encoder-{'bf16' if bf16 else 'fp32'}", build_model=lambda: _TiedEncoder().to(dtype),
                    make_batch=_tokens, loss=lambda out, batch: F.cross_entropy(out.flatten(0, 1).float(),
                                                                               batch[1].flatten()))


def _randomly_wide():
    import random

    width = 8 + int(random.random() * 1000)
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4))


def python_random() -> Workload:
    """The single plug-in with a hidden width drawn from Python's `random` at build time: its
    peak repeats only when every run seeds `random` alike."""
    return Workload(**{**single().__dict__, "name": "plugin-mlp-random", "build_model": _randomly_wide})


def lazy() -> Workload:
    """The single plug-in made of lazy layers: refused in one line by every meter."""
    return Workload(**{**single().__dict__, "name": "plugin-mlp-lazy",
                       "build_model": lambda: nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.LazyLinear(4))})



def unnamed_width(width: int = 32) -> Workload:
    """The single plug-in with a hidden layer of `width`, a setting its name does not show."""
    return Workload(**{**single().__dict__, "build_model": lambda: nn.Sequential(
        nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4))})


class _Bank(nn.Module):
    """Keeps the last `size` detached hidden activations in a Python list (a memory bank)."""

    def __init__(self, size):
        super().__init__()
        self.size = size
        self.body = nn.Linear(16, 64)
        self.head = nn.Linear(64, 4)
        self.bank = []

    def forward(self, x):
        h = torch.relu(self.body(x))
        self.bank = (self.bank + [h.detach().clone()])[-self.size:]
        return self.head(h)


def memory_bank(size: int = 3) -> Workload:
    """The single plug-in's batches through `_Bank(size)`."""
    return Workload(**{**single().__dict__, "name": f"plugin-bank{size}", "build_model": lambda: _Bank(size)})


class _CountsEagerForwards(nn.Module):
    """An MLP whose forward counts the calls that run eagerly (compiled code skips the count)."""

    eager_forwards = 0

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        if not torch.compiler.is_compiling():
            type(self).eager_forwards += 1
        return self.b(torch.relu(self.a(x)))


def counts_eager_forwards() -> Workload:
    """The single plug-in with a forward that counts its eager runs (`_CountsEagerForwards`):
    whether a compiled case's timed steps really ran compiled."""
    return Workload(**{**single().__dict__, "name": "plugin-eager-counter", "build_model": _CountsEagerForwards})


class _SharedLayer(nn.Module):
    """One linear layer registered under two names (`self.b = self.a`) and called twice."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = self.a
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))))


def shared_layer() -> Workload:
    """The single plug-in with one layer under two names: a lever on either name is one on both."""
    return Workload(**{**single().__dict__, "name": "plugin-shared-layer", "build_model": _SharedLayer})
