"""Adapters that give every model the harness's output contract: a dict with at least `logits`.

Models without a map of their own expose `forward_features` (the last convolutional map) and
`forward_head`, which is what Grad-CAM needs (`baselines.maps`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ._surgery import TimmNet


class TimmClassifier(nn.Module):
    """Wrap a timm classifier so that it returns {"logits": ...} and exposes its feature map."""

    def __init__(self, net: TimmNet) -> None:
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(features)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.forward_head(self.forward_features(x))}
