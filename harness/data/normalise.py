"""Normalisation per batch, on the training device: per-image float work on a 50x50 patch costs
more than reading it from the cache, and uint8 batches move a quarter of the bytes to a GPU."""

from __future__ import annotations

from typing import Callable

import torch

_NORMALISATION = {
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # pixels / 255, as Keras `rescale=1/255`
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # the 004 torchvision notebooks; timm's EfficientNetV2
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def normalisation_constants(
    normalisation: str, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean, scale), each 3 x 1 x 1 on the 0-255 scale, of `normalisation`: x -> (x - mean) * scale."""
    mean, std = (torch.tensor(v, device=device).view(3, 1, 1) * 255 for v in _NORMALISATION[normalisation])
    return mean, 1 / std


def batch_normaliser(
    normalisation: str, device: str | torch.device, *, channels_last: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return uint8 batch (... x 3 x H x W) -> float batch normalised as `normalisation` says, an
    image batch in NHWC memory when `channels_last` (a bag's 5-d batch stays as it is)."""
    mean, scale = normalisation_constants(normalisation, device)

    def normalise(batch: torch.Tensor) -> torch.Tensor:
        # In place: on a batch of large images each temporary would cost as much as the work.
        x = batch.to(device, non_blocking=True).float().sub_(mean).mul_(scale)
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

    return normalise
