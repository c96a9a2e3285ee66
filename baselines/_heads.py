"""Heads shared by the attention models: the bifurcation block, the RoI map, the conv classifier."""

from __future__ import annotations

import torch
from torch import nn


def bifurcation(in_channels: int, out_channels: int = 512) -> nn.Sequential:
    """Return 001's bp block BN -> ReLU -> Conv1x1 (bias) -> BN -> ReLU (its layout is fixed by the count, §5)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=True),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class RoIHead(nn.Module):
    """Conv1x1 -> sigmoid: a per-pixel RoI probability map at the feature resolution."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, 1, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(features))


class ConvClassifier(nn.Module):
    """Conv1x1 to class maps, then global average pooling to logits."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features).mean((2, 3))
