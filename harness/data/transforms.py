"""Albumentations pipelines by name: augmentation, resize and normalisation of a uint8 patch."""

from __future__ import annotations

from typing import Literal

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

Augment = Literal["none", "flips", "flips_rot90", "pis"]
Normalisation = Literal["unit", "half", "imagenet"]

_NORMALISATION = {
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # pixels / 255, as Keras `rescale=1/255`
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # the 004 torchvision notebooks
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _augmentations(augment: Augment) -> list[A.BasicTransform]:
    flips = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if augment == "none":
        return []
    if augment == "flips":
        return flips
    if augment == "flips_rot90":
        return [*flips, A.RandomRotate90(p=0.5)]
    # Keras ImageDataGenerator of the CancerNet tutorial: rotation 20, zoom 0.05, shift 0.1,
    # shear 0.05 degrees, fill_mode="nearest" (= replicate the border).
    return [
        A.Affine(
            rotate=(-20, 20),
            scale=(0.95, 1.05),
            translate_percent=(-0.1, 0.1),
            shear=(-0.05, 0.05),
            border_mode=cv2.BORDER_REPLICATE,
            p=1.0,
        ),
        *flips,
    ]


def build_transform(
    *, augment: Augment, input_size: int, patch_size: int, normalisation: Normalisation, train: bool, seed: int = 0
) -> A.Compose:
    """Return the pipeline from a HxWx3 uint8 patch to a normalised 3xHxW float tensor.

    Shrinking uses nearest-neighbour, as Keras `flow_from_directory` did for CancerNet's 50->48;
    enlarging uses bilinear. Augmentation runs only when `train`.
    """
    steps = _augmentations(augment) if train else []
    if input_size != patch_size:
        interpolation = cv2.INTER_NEAREST if input_size < patch_size else cv2.INTER_LINEAR
        steps.append(A.Resize(input_size, input_size, interpolation=interpolation))
    mean, std = _NORMALISATION[normalisation]
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps, seed=seed)
