"""Image classifiers: a small ConvNet with BatchNorm or GroupNorm, and an MLP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from accumbench.workloads.base import Workload


@dataclass(frozen=True)
class ConvNetConfig:
    """Image side, input channels, stage widths and number of classes."""

    image: int
    channels: tuple[int, ...]
    classes: int = 10
    in_channels: int = 3


CONVNET_SIZES: dict[str, ConvNetConfig] = {
    "tiny": ConvNetConfig(image=16, channels=(8, 16)),
    "small": ConvNetConfig(image=32, channels=(32, 64, 128)),
    "large": ConvNetConfig(image=64, channels=(64, 128, 256, 512), classes=100),
}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        # Groups of 8 channels (at least one group): per-sample statistics, so accumulation is exact.
        return nn.GroupNorm(max(1, channels // 8), channels)
    raise ValueError(f"unknown norm {kind!r}; choose bn or gn")


class ConvStage(nn.Sequential):
    """Two conv-norm-ReLU layers, the first halving the image (except in the first stage): the
    unit `--checkpoint blocks` checkpoints."""


class ConvNet(nn.Module):
    """Stages of conv-norm-ReLU, each halving the image, then global average pool and a linear head."""

    def __init__(self, cfg: ConvNetConfig, norm: str) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        previous = cfg.in_channels
        for i, width in enumerate(cfg.channels):
            stride = 1 if i == 0 else 2
            stages.append(ConvStage(
                nn.Conv2d(previous, width, 3, stride=stride, padding=1, bias=False), _norm(norm, width), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False), _norm(norm, width), nn.ReLU()))
            previous = width
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(previous, cfg.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _image_batch(cfg: ConvNetConfig):
    def make_batch(n: int, generator: torch.Generator):
        images = torch.randn(n, cfg.in_channels, cfg.image, cfg.image, generator=generator)
        labels = torch.randint(0, cfg.classes, (n,), generator=generator)
        return images, labels

    return make_batch


def classification_loss(logits: torch.Tensor, batch) -> torch.Tensor:
    """Mean cross-entropy against the batch's integer labels (`batch[1]`)."""
    return F.cross_entropy(logits.float(), batch[1])


def _convnet(norm: str, size: str) -> Workload:
    if size not in CONVNET_SIZES:
        raise ValueError(f"unknown convnet size {size!r}; choose one of {', '.join(CONVNET_SIZES)}")
    cfg = CONVNET_SIZES[size]
    return Workload(
        name=f"convnet-{norm}-{size}",
        build_model=lambda: ConvNet(cfg, norm),
        make_batch=_image_batch(cfg),
        loss=classification_loss,
        checkpoint_blocks="ConvStage",  # each stage: two conv-norm-ReLU layers
        options={"size": size},
        description=f"ConvNet {cfg.channels} with {'BatchNorm' if norm == 'bn' else 'GroupNorm'}, "
        f"{cfg.image}x{cfg.image} images",
    )


def convnet_bn(size: str = "tiny") -> Workload:
    """ConvNet with BatchNorm: batch statistics make accumulation differ from the large batch."""
    return _convnet("bn", size)


def convnet_gn(size: str = "tiny") -> Workload:
    """ConvNet with GroupNorm: per-sample statistics, so accumulation matches the large batch."""
    return _convnet("gn", size)


@dataclass(frozen=True)
class MLPConfig:
    """Input width, hidden width, number of hidden layers, classes."""

    d_in: int
    hidden: int
    layers: int
    classes: int


MLP_SIZES: dict[str, MLPConfig] = {
    "tiny": MLPConfig(d_in=32, hidden=64, layers=2, classes=10),
    "small": MLPConfig(d_in=256, hidden=1024, layers=3, classes=100),
    "large": MLPConfig(d_in=1024, hidden=8192, layers=4, classes=1000),
}


def build_mlp(cfg: MLPConfig) -> nn.Sequential:
    """Linear-ReLU stack: `layers` hidden layers of width `hidden`."""
    layers: list[nn.Module] = []
    previous = cfg.d_in
    for _ in range(cfg.layers):
        layers += [nn.Linear(previous, cfg.hidden), nn.ReLU()]
        previous = cfg.hidden
    layers.append(nn.Linear(previous, cfg.classes))
    return nn.Sequential(*layers)


def mlp(size: str = "tiny") -> Workload:
    """A plain MLP classifier on random vectors: the cleanest case for memory arithmetic."""
    if size not in MLP_SIZES:
        raise ValueError(f"unknown mlp size {size!r}; choose one of {', '.join(MLP_SIZES)}")
    cfg = MLP_SIZES[size]

    def make_batch(n: int, generator: torch.Generator):
        return torch.randn(n, cfg.d_in, generator=generator), torch.randint(
            0, cfg.classes, (n,), generator=generator
        )

    return Workload(
        name=f"mlp-{size}",
        build_model=lambda: build_mlp(cfg),
        make_batch=make_batch,
        loss=classification_loss,
        options={"size": size},
        description=f"MLP {cfg.d_in}->{cfg.hidden}x{cfg.layers}->{cfg.classes}",
    )
