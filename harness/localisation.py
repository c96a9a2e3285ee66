"""Localisation scores of RoI and attention maps against binary RoI masks (BASELINES.md §4.3)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from baselines.maps import explanation_maps

THRESHOLD = 0.5  # 001's τ for mIoU


def iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the IoU of each image's binary maps (B x 1 x h x w); 1 where both are empty (§4.3)."""
    predicted, target = predicted.flatten(1).bool(), target.flatten(1).bool()
    union = (predicted | target).sum(1)
    inter = (predicted & target).sum(1)
    return torch.where(union == 0, torch.ones_like(union, dtype=torch.float64), inter.double() / union.clamp_min(1))


def map_ious(
    maps: torch.Tensor, masks: torch.Tensor, threshold: float = THRESHOLD
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per-image IoU at the map's native grid (mask area-averaged down, then binarised at
    0.5, as the RoI target in training) and at the mask's resolution (map upsampled bilinearly)."""
    native_mask = F.interpolate(masks.float(), size=maps.shape[-2:], mode="area") >= 0.5
    full_map = F.interpolate(maps.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return iou(maps >= threshold, native_mask), iou(full_map >= threshold, masks >= 0.5)


@torch.no_grad()
def localisation_scores(
    model: torch.nn.Module, loader: DataLoader, normalise: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, float]:
    """Return mIoU (native and full resolution) of the model's own maps over a loader whose batches
    carry masks; the mean over its images."""
    native, full = [], []
    for batch in loader:
        _, maps = explanation_maps(model, normalise(batch["image"]))
        a, b = map_ious(maps.cpu(), batch["mask"])
        native.append(a.numpy())
        full.append(b.numpy())
    return {"miou_native": float(np.concatenate(native).mean()), "miou_full": float(np.concatenate(full).mean())}
