"""Built-in torch classifiers: ``mlp``, ``cnn5``, ``lenet300``, ``resnet``.

All take image batches (N, C, H, W) or flat (N, D) and return logits (N, n_classes).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from fipgraph.errors import ConfigError
from fipgraph.models.registry import register_model


def _check_positive(name: str, **values: int) -> None:
    for key, v in values.items():
        if int(v) < 1:
            raise ConfigError(f"model {name!r}: {key} must be >= 1, got {v}")


class MLP(nn.Module):
    """Flatten, then Linear-ReLU blocks, then a linear head."""

    def __init__(self, in_features: int, hidden: Sequence[int], n_classes: int) -> None:
        super().__init__()
        dims = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(nn.Flatten(), *layers)
        self.head = nn.Linear(dims[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@register_model("mlp")
def mlp(in_features: int = 64, hidden: Sequence[int] = (128,), n_classes: int = 10) -> nn.Module:
    """Multilayer perceptron; defaults fit 8x8 digits."""
    _check_positive("mlp", in_features=in_features, n_classes=n_classes, **{f"hidden[{i}]": h for i, h in enumerate(hidden)})
    return MLP(in_features, list(hidden), n_classes)


@register_model("lenet300")
def lenet300(in_features: int = 784, n_classes: int = 10) -> nn.Module:
    """LeNet-300-100 (the classic pruning benchmark)."""
    _check_positive("lenet300", in_features=in_features, n_classes=n_classes)
    return MLP(in_features, [300, 100], n_classes)


class CNN5(nn.Module):
    """The paper's 5-layer CNN: conv 32, conv 64, fc 600, fc 120, fc n_classes.

    A max-pool after conv1 and an adaptive max-pool to 4x4 after conv2 make the flattened size
    1024 for any input of at least 8x8, so one architecture runs on 8x8 digits and 28x28 MNIST.
    """

    def __init__(self, in_channels: int, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (N, 32, H/2, W/2)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(4),    # (N, 64, 4, 4)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 16, 600), nn.ReLU(), nn.Linear(600, 120), nn.ReLU(),
            nn.Linear(120, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or min(x.shape[-2:]) < 8:
            raise ConfigError(f"cnn5 needs images (N, C, H, W) with H, W >= 8, got shape {tuple(x.shape)}")
        return self.classifier(self.features(x))


@register_model("cnn5")
def cnn5(in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """The paper's CNN (works on 8x8 and 28x28 inputs)."""
    _check_positive("cnn5", in_channels=in_channels, n_classes=n_classes)
    return CNN5(in_channels, n_classes)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1-projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, sec. 4.2): depth 6n+2, three stages of widths w, 2w, 4w."""

    def __init__(self, depth: int, width: int, in_channels: int, n_classes: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, c = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(c, c_out, 2 if stage > 0 and i == 0 else 1))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


@register_model("resnet")
def resnet(depth: int = 8, width: int = 16, in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """Small ResNet-(6n+2), e.g. depth 8 or 20; has BatchNorm running stats and int buffers."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    _check_positive("resnet", width=width, in_channels=in_channels, n_classes=n_classes)
    return ResNet(depth, width, in_channels, n_classes)
