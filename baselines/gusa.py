"""The GuSA family of 001 on a DenseNet-169 backbone (BASELINES.md §2.7-2.11, §2.13).

B = full DenseNet-169 + GAP + FC. The other variants keep the backbone up to DB3 and split at
the bifurcation point (bp, 512x24x32 for a 384x512 input): FA aggregates DB1, DB2 and DB3 before
bp; GuRoI adds an RoI branch trained with masks; GuSA multiplies the bp activations by that RoI
map before classifying; RGA is FA+GuRoI trained with a guidance loss instead of Dice.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._heads import ConvClassifier, RoIHead, bifurcation
from ._keras import KERAS_DENSENET, keras_layers
from ._outputs import TimmClassifier
from ._registry import PublishedCount, register
from ._surgery import densenet_stages, timm_model

Guidance = Literal["none", "roi", "attention"]
BACH_SIZE = (384, 512)
_TABLE_I = "001 Table I"


class GuidedDenseNet(nn.Module):
    """DenseNet-169 up to DB3, optional feature aggregation, bp, optional RoI branch, conv classifier."""

    def __init__(self, num_classes: int, *, aggregate: bool, guidance: Guidance, pretrained: str | None) -> None:
        super().__init__()
        f = densenet_stages(pretrained)
        self.stem = nn.Sequential(f.conv0, f.norm0, f.pool0)
        self.block1, self.transition1 = f.denseblock1, f.transition1
        self.block2, self.transition2 = f.denseblock2, f.transition2
        self.block3 = f.denseblock3
        self.aggregate = aggregate
        width = 256 + 512 + 1280 if aggregate else 1280
        self.bp = bifurcation(width, 512)
        self.roi_head = RoIHead(512) if guidance != "none" else None
        self.attend = guidance == "attention"
        self.classifier = ConvClassifier(512, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the bp activations (B x 512 x H/16 x W/16)."""
        d1 = self.block1(self.stem(x))
        d2 = self.block2(self.transition1(d1))
        d3 = self.block3(self.transition2(d2))
        if self.aggregate:
            # AvgPool 4 and 2 bring DB1 and DB2 to DB3's grid; adaptive pooling is the same for
            # inputs divisible by 16 and still aligns the grids otherwise.
            size = d3.shape[-2:]
            d3 = torch.cat([F.adaptive_avg_pool2d(d1, size), F.adaptive_avg_pool2d(d2, size), d3], 1)
        return self.bp(d3)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.forward_features(x)
        if self.roi_head is None:
            return {"logits": self.classifier(features)}
        roi = self.roi_head(features)
        attended = features * roi if self.attend else features
        return {"logits": self.classifier(attended), "roi": roi}


@register(
    "gusa_baseline",
    framework="tensorflow",
    input_size=BACH_SIZE,
    published=PublishedCount(12_332_740, "weights_only", reproduced=True, source=_TABLE_I),
    published_classes=4,
)
def gusa_baseline(num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Return 001's Baseline: full DenseNet-169 -> ReLU -> GAP -> FC (Grad-CAM gives its maps)."""
    return TimmClassifier(keras_layers(timm_model("densenet169.tv_in1k", num_classes, pretrained), KERAS_DENSENET))


@register(
    "gusa_fa",
    framework="tensorflow",
    input_size=BACH_SIZE,
    published=PublishedCount(7_022_792, "keras", reproduced=False, source=_TABLE_I),
    published_classes=4,
)
def gusa_fa(num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Return B+FA: DB1/DB2/DB3 aggregated before bp (the harness FA layout of §2.9)."""
    return GuidedDenseNet(num_classes, aggregate=True, guidance="none", pretrained=pretrained)


@register(
    "gusa_guroi",
    framework="tensorflow",
    input_size=BACH_SIZE,
    outputs=("logits", "roi"),
    loss="ce_dice",
    published=PublishedCount(6_483_013, "keras", reproduced=True, source=_TABLE_I),
    published_classes=4,
)
def gusa_guroi(num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Return B+GuRoI: an RoI branch trained with masks beside the classifier, not feeding it."""
    return GuidedDenseNet(num_classes, aggregate=False, guidance="roi", pretrained=pretrained)


@register(
    "gusa_fa_guroi",
    framework="tensorflow",
    input_size=BACH_SIZE,
    outputs=("logits", "roi"),
    loss="ce_dice",
    published=PublishedCount(7_024_844, "keras", reproduced=False, source=_TABLE_I),
    published_classes=4,
)
def gusa_fa_guroi(num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Return B+FA+GuRoI."""
    return GuidedDenseNet(num_classes, aggregate=True, guidance="roi", pretrained=pretrained)


@register(
    "gusa",
    framework="tensorflow",
    input_size=BACH_SIZE,
    outputs=("logits", "roi"),
    loss="ce_dice",
    published=PublishedCount(6_483_013, "keras", reproduced=True, source=_TABLE_I),
    published_classes=4,
)
def gusa(num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Return B+GuSA: the RoI map multiplies the bp activations before classification."""
    return GuidedDenseNet(num_classes, aggregate=False, guidance="attention", pretrained=pretrained)


@register(
    "gusa_fa_gusa",
    framework="tensorflow",
    input_size=BACH_SIZE,
    outputs=("logits", "roi"),
    loss="ce_dice",
    published=PublishedCount(7_024_844, "keras", reproduced=False, source=_TABLE_I),
    published_classes=4,
)
def gusa_fa_gusa(num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Return B+FA+GuSA, 001's proposed model."""
    return GuidedDenseNet(num_classes, aggregate=True, guidance="attention", pretrained=pretrained)


@register(
    "rga",
    framework="tensorflow",
    input_size=BACH_SIZE,
    outputs=("logits", "roi"),
    loss="ce_guide",
    published=PublishedCount(7_024_844, "keras", reproduced=False, source=_TABLE_I),
    published_classes=4,
)
def rga(num_classes: int, pretrained: str | None = None) -> nn.Module:
    """Return the harness reconstruction of RGA (§2.13): FA+GuRoI layout, guidance loss."""
    return GuidedDenseNet(num_classes, aggregate=True, guidance="roi", pretrained=pretrained)
