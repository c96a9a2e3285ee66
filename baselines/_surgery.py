"""Backbone surgery shared by the transfer baselines: freezing all but the head or the last stage."""

from __future__ import annotations

from typing import Literal

from torch import nn

FreezeMode = Literal["none", "head_only", "last_stage"]


def freeze_backbone(model: nn.Module, mode: FreezeMode) -> nn.Module:
    """Set requires_grad on a timm classifier so that only the parts `mode` names train; returns it."""
    if mode == "none":
        return model
    trainable = {id(p) for p in model.get_classifier().parameters()}
    if mode == "last_stage":
        last_stage = model.get_submodule(model.feature_info[-1]["module"])
        trainable |= {id(p) for p in last_stage.parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) in trainable
    return model
