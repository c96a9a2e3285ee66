"""Losses, defined once and read from a model's output dict (BASELINES.md §2.10, §2.13, §6 item 16)."""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

from ._keras import KERAS_EPSILON

RoITarget = Literal["hard", "soft"]
Loss = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None], torch.Tensor]


def roi_target(masks: torch.Tensor, size: tuple[int, int], mode: RoITarget = "hard") -> torch.Tensor:
    """Return masks (B x 1 x H x W, in {0, 1}) reduced to an RoI map's size by area averaging;
    `hard` binarises the fraction of RoI pixels per cell at 0.5."""
    fraction = F.adaptive_avg_pool2d(masks.float(), size)
    return (fraction >= 0.5).float() if mode == "hard" else fraction


def dice_loss(roi: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Return the batch mean of 1 - (2 sum(y p) + eps) / (sum(y) + sum(p) + eps), per image."""
    dims = tuple(range(1, roi.dim()))
    overlap = (roi * target).sum(dims)
    return (1 - (2 * overlap + eps) / (roi.sum(dims) + target.sum(dims) + eps)).mean()


def guidance_loss(roi: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return RGA's reconstructed guidance: -mean log(1 - roi) over cells outside the RoI (§2.13)."""
    outside = target < 0.5
    if not outside.any():
        return roi.sum() * 0
    return -torch.log((1 - roi[outside]).clamp_min(1e-7)).mean()


def keras_crossentropy(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Return Keras' crossentropy of softmax(logits) against one-hot labels, as a Keras seed compiled
    it: `binary_crossentropy` averaged over the units for two classes, `categorical_crossentropy`
    for more; probabilities clipped to [1e-7, 1 - 1e-7] (Keras 3, `keras/src/backend/torch/nn.py`).

    Class weights act as Keras' `class_weight`: each sample's loss times its class' weight, summed
    and divided by the batch size (`sum_over_batch_size`), not by the sum of the weights as PyTorch's
    weighted mean does.
    """
    probs = torch.softmax(logits.float(), 1)
    target = F.one_hot(labels, probs.shape[1]).float()
    if probs.shape[1] == 2:
        # Written out rather than F.binary_cross_entropy, which raises on NaN: a diverged run must
        # reach the divergence check. With one-hot targets each unit keeps exactly one log term.
        clipped = probs.clamp(KERAS_EPSILON, 1 - KERAS_EPSILON)
        per_sample = -(target * clipped.log() + (1 - target) * (1 - clipped).log()).mean(1)
    else:
        probs = (probs / probs.sum(1, keepdim=True)).clamp(KERAS_EPSILON, 1 - KERAS_EPSILON)
        per_sample = -(target * probs.log()).sum(1)
    if class_weights is not None:
        per_sample = per_sample * class_weights[labels]
    return per_sample.sum() / len(per_sample)


def build_loss(
    kind: Literal["ce", "ce_dice", "ce_guide"],
    *,
    class_weights: torch.Tensor | None = None,
    lambda_roi: float = 1.0,
    roi_mode: RoITarget = "hard",
    keras: bool = False,
) -> Loss:
    """Return loss(outputs, labels, masks): cross-entropy (class-weighted if given; Keras' clipped
    crossentropy and class_weight when `keras`), plus lambda_roi x Dice or guidance against the
    downsampled mask, plus any `penalty` the model adds."""

    def loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        if keras:
            total = keras_crossentropy(outputs["logits"], labels, class_weights)
        else:
            total = F.cross_entropy(outputs["logits"], labels, weight=class_weights)
        if kind != "ce":
            if masks is None:
                raise ValueError(f"loss {kind!r} needs an RoI mask per image and the batch has none")
            roi = outputs["roi"]
            target = roi_target(masks, (roi.shape[-2], roi.shape[-1]), roi_mode)
            total = total + lambda_roi * (dice_loss(roi, target) if kind == "ce_dice" else guidance_loss(roi, target))
        if "penalty" in outputs:
            total = total + outputs["penalty"]
        return total

    return loss
