"""The regression networks: torchvision ResNets with one input channel and one output."""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("resnet18", "resnet101")


def build_model(architecture: str = "resnet18") -> nn.Module:
    """A freshly initialised ResNet-18/101 for 1 x 256 x 256 slices -> one SSIM value.

    No pretrained weights: nothing is downloaded (the paper trains from scratch).
    """
    import torchvision

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    net = getattr(torchvision.models, architecture)(weights=None)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Linear(net.fc.in_features, 1)
    return net


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_ssim(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B,) raw regression output."""
    return model(batch).reshape(-1)
