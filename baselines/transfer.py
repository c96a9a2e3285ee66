"""ImageNet-architecture baselines from timm with a new head (BASELINES.md §2.3-2.6)."""

from __future__ import annotations

import timm
from torch import nn

from ._outputs import LogitsDict
from ._registry import register
from ._surgery import FreezeMode, freeze_backbone
from ._weights import local_weights_file


def _build_timm(arch: str, num_classes: int, pretrained: str | None, freeze: FreezeMode) -> nn.Module:
    """Return a timm model with a `num_classes` head, weights from a local file only, frozen as asked."""
    weights = local_weights_file(pretrained)
    if weights is None and freeze != "none":
        raise ValueError(f"freeze={freeze!r} needs pretrained weights; without a weights file use freeze='none'")
    model = timm.create_model(
        arch,
        pretrained=weights is not None,
        num_classes=num_classes,
        pretrained_cfg_overlay=dict(file=str(weights)) if weights is not None else None,
    )
    return LogitsDict(freeze_backbone(model, freeze))


@register("resnet18", input_size=50)
def resnet18(num_classes: int, pretrained: str | None = None, freeze: FreezeMode = "none") -> nn.Module:
    """Return ResNet-18 (torchvision weights layout, timm `resnet18.tv_in1k`) with a new FC head."""
    return _build_timm("resnet18.tv_in1k", num_classes, pretrained, freeze)
