"""Adapters that give every model the harness's output contract: a dict with at least `logits`."""

from __future__ import annotations

import torch
from torch import nn


class LogitsDict(nn.Module):
    """Wrap a module that returns logits so that it returns {"logits": ...}."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}
