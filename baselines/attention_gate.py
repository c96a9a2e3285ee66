"""Attention-gated classification (Schlemper et al. 2019) on DenseNet-169, as 001 re-implemented it
(BASELINES.md §2.12): grid attention gates on the T2 and T3 outputs, gated by the last feature map."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import PublishedCount, register
from ._surgery import densenet_stages

Normalisation = Literal["mean_flow", "sigmoid", "softmax"]
Aggregation = Literal["concat", "mean"]


def normalise_attention(scores: torch.Tensor, mode: Normalisation) -> torch.Tensor:
    """Return attention weights over the spatial grid of `scores` (B x 1 x h x w).

    mean_flow: minus the spatial minimum, over the spatial sum (>= 0, sums to 1); softmax: sums to
    1; sigmoid: each cell in (0, 1), divided by the number of cells so pooling stays a mean.
    """
    flat = scores.flatten(2)
    if mode == "mean_flow":
        shifted = flat - flat.amin(2, keepdim=True)
        weights = shifted / shifted.sum(2, keepdim=True).clamp_min(1e-12)
    elif mode == "softmax":
        weights = flat.softmax(2)
    else:
        weights = torch.sigmoid(flat) / flat.shape[2]
    return weights.view_as(scores)


class GridAttentionGate(nn.Module):
    """S-AG's grid attention block (use_W=False, sub-sample 1): s = psi(ReLU(theta(x) + up(phi(g))))."""

    def __init__(self, x_channels: int, g_channels: int, inter_channels: int, normalisation: Normalisation) -> None:
        super().__init__()
        self.theta = nn.Conv2d(x_channels, inter_channels, 1, bias=False)
        self.phi = nn.Conv2d(g_channels, inter_channels, 1, bias=False)
        self.psi = nn.Conv2d(inter_channels, 1, 1, bias=True)
        self.normalisation = normalisation

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the attended vector (B x Cx) and the attention map (B x 1 x h x w)."""
        gate = F.interpolate(self.phi(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
        alpha = normalise_attention(self.psi(F.relu(self.theta(x) + gate)), self.normalisation)
        return (alpha * x).sum((2, 3)), alpha


class AttentionGatedDenseNet(nn.Module):
    """Full DenseNet-169; gates on T2 (256 ch) and T3 (640 ch) outputs, gating signal ReLU(norm5)."""

    def __init__(
        self, num_classes: int, *, normalisation: Normalisation, aggregation: Aggregation, pretrained: str | None
    ) -> None:
        super().__init__()
        f = densenet_stages(pretrained)
        self.to_t2 = nn.Sequential(
            f.conv0, f.norm0, f.pool0, f.denseblock1, f.transition1, f.denseblock2, f.transition2
        )
        self.to_t3 = nn.Sequential(f.denseblock3, f.transition3)
        self.to_g = nn.Sequential(f.denseblock4, f.norm5)  # timm's norm5 is BN + ReLU
        self.gates = nn.ModuleList([GridAttentionGate(c, 1664, 1664, normalisation) for c in (256, 640)])
        self.aggregation = aggregation
        if aggregation == "concat":
            self.classifier = nn.Linear(256 + 640 + 1664, num_classes)
        else:
            self.classifiers = nn.ModuleList([nn.Linear(c, num_classes) for c in (256, 640, 1664)])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        t2 = self.to_t2(x)
        t3 = self.to_t3(t2)
        g = self.to_g(t3)
        (v1, a1), (v2, a2) = self.gates[0](t2, g), self.gates[1](t3, g)
        vectors = [v1, v2, g.mean((2, 3))]
        if self.aggregation == "concat":
            logits = self.classifier(torch.cat(vectors, 1))
        else:
            logits = torch.stack([head(v) for head, v in zip(self.classifiers, vectors)]).mean(0)
        return {"logits": logits, "attention": [a1, a2]}


@register(
    "attention_gate",
    framework="tensorflow",
    input_size=(384, 512),
    outputs=("logits", "attention"),
    published=PublishedCount(19_368_390, "weights_only", reproduced=True, source="001 Table I"),
    published_classes=4,
)
def attention_gate(
    num_classes: int,
    pretrained: str | None = None,
    ag_norm: Normalisation = "mean_flow",
    ag_aggregation: Aggregation = "concat",
) -> nn.Module:
    """Return the attention-gated DenseNet-169; `attention` holds the T2 and T3 gate maps."""
    return AttentionGatedDenseNet(num_classes, normalisation=ag_norm, aggregation=ag_aggregation, pretrained=pretrained)
