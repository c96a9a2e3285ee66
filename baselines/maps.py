"""Explanation maps: a model's own (`roi`, `attention`, `attention_map`) or Grad-CAM where it has none."""

from __future__ import annotations

from typing import Protocol, cast

import torch
from torch import nn


class _FeatureHead(Protocol):
    """What Grad-CAM needs of a model: its last feature map and the head on it."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...
    def forward_head(self, features: torch.Tensor) -> torch.Tensor: ...


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


def grad_cam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Return Grad-CAM maps (B x 1 x h x w, min-max normalised to [0, 1]) on the last feature map,
    for `classes` (default: the predicted class). The model must expose forward_features/forward_head."""
    halves = cast(_FeatureHead, model)
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        features = halves.forward_features(images).detach().requires_grad_(True)
        logits = halves.forward_head(features)
        chosen = logits.argmax(1) if classes is None else classes
        (grads,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), features)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True)).detach()
    model.train(was_training)
    return _min_max(cam)


def draws_maps(model: nn.Module, own_maps: bool) -> bool:
    """Return True when explanation maps can be drawn for `model`: a map of its own, or the
    feature map and head Grad-CAM needs (a fine-tuned ViT's tokens are no feature map)."""
    return own_maps or (hasattr(model, "forward_features") and hasattr(model, "forward_head"))


@torch.no_grad()
def explanation_maps(model: nn.Module, images: torch.Tensor) -> tuple[str, torch.Tensor]:
    """Return (kind, B x 1 x h x w maps in [0, 1]): the model's RoI map, its finest attention map,
    or Grad-CAM for a model without a map of its own."""
    model.eval()
    outputs = model(images)
    if "roi" in outputs:
        return "roi", outputs["roi"]
    if "attention_map" in outputs:
        return "attention", outputs["attention_map"]
    if "attention" in outputs and isinstance(outputs["attention"], list):
        return "attention", _min_max(outputs["attention"][0])
    return "gradcam", grad_cam(model, images)
