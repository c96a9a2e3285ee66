"""Albumentations pipelines by name: augmentation and resize of a uint8 image, into a uint8 tensor.

Normalisation happens per batch, on the training device (`batch_normaliser`): per-image float
work on a 50x50 patch costs more than reading it from the cache, and uint8 batches move a
quarter of the bytes to a GPU.
"""

from __future__ import annotations

from typing import Callable

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from harness.config import TrainParams

_NORMALISATION = {
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # pixels / 255, as Keras `rescale=1/255`
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # the 004 torchvision notebooks; timm's EfficientNetV2
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _flips() -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]


def _rotation(mode: str) -> A.BasicTransform:
    if mode == "flip180":
        # 0 or 180 degrees keeps a 384x512 image's aspect; with the flips, the rectangle's symmetries.
        return A.Rotate(limit=(180, 180), p=0.5, border_mode=cv2.BORDER_REFLECT_101)
    return A.Rotate(limit=15 if mode == "small15" else 180, p=1.0, border_mode=cv2.BORDER_REFLECT_101)


def _augmentations(p: TrainParams) -> list[A.BasicTransform]:
    if p.augment == "none":
        return []
    if p.augment == "flips":
        return _flips()
    if p.augment in ("flips_rot90", "dihedral"):
        return [*_flips(), A.RandomRotate90(p=0.5)]
    if p.augment == "gusa":
        # 001: mirroring, random rotations, additive noise, intensity change (magnitudes searched, §2.7).
        return [
            *_flips(), _rotation(p.rotation),
            A.GaussNoise(std_range=(0.0, p.noise_std), p=1.0 if p.noise_std > 0 else 0.0),
            A.RandomBrightnessContrast(brightness_limit=p.intensity, contrast_limit=0.0, p=1.0 if p.intensity > 0 else 0.0),
        ]
    if p.augment == "essex2023":
        # 003 §3.3: rotation up to 180, flips, shift and zoom 10 %, shear 10 degrees, brightness 20 %.
        return [
            A.Affine(rotate=(-180, 180), translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), shear=(-10, 10),
                     border_mode=cv2.BORDER_REPLICATE, p=1.0),
            *_flips(), A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.0, p=1.0),
        ]
    # pis: Keras ImageDataGenerator of the CancerNet tutorial: rotation 20, zoom 0.05, shift 0.1,
    # shear 0.05 degrees, fill_mode="nearest" (= replicate the border).
    return [
        A.Affine(rotate=(-20, 20), scale=(0.95, 1.05), translate_percent=(-0.1, 0.1), shear=(-0.05, 0.05),
                 border_mode=cv2.BORDER_REPLICATE, p=1.0),
        *_flips(),
    ]


class ToUint8Tensor:
    """The albumentations call signature, for a pipeline that only lays HxWx3 out as 3xHxW."""

    def __call__(self, *, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        out = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        if mask is not None:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(mask))
        return out

    def set_random_seed(self, seed: int) -> None:
        """Nothing to reseed: this pipeline draws no random numbers."""


def build_transform(
    params: TrainParams, *, stored_hw: tuple[int, int], train: bool, seed: int = 0
) -> A.Compose | ToUint8Tensor:
    """Return the pipeline from a HxWx3 uint8 image (and mask) to a 3xHxW uint8 tensor.

    Images stored at `stored_hw` are resized to the run's input size: shrinking uses
    nearest-neighbour, as Keras `flow_from_directory` did for CancerNet's 50->48; enlarging uses
    bilinear. Augmentation runs only when `train`; with neither, no albumentations call is made.
    """
    steps = _augmentations(params) if train else []
    height, width = params.input_hw
    if (height, width) != tuple(stored_hw):
        interpolation = cv2.INTER_NEAREST if height * width < stored_hw[0] * stored_hw[1] else cv2.INTER_LINEAR
        steps.append(A.Resize(height, width, interpolation=interpolation))
    if not steps:
        return ToUint8Tensor()
    return A.Compose([*steps, ToTensorV2()], seed=seed)


def batch_normaliser(normalisation: str, device: str | torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return uint8 batch (... x 3 x H x W) -> float batch normalised as `normalisation` says."""
    mean, std = (torch.tensor(v, device=device).view(3, 1, 1) * 255 for v in _NORMALISATION[normalisation])
    scale = 1 / std
    # In place: on a batch of large images each temporary would cost as much as the work.
    return lambda batch: batch.to(device, non_blocking=True).float().sub_(mean).mul_(scale)


class BagTransform:
    """Bag (N x p x p x 3 uint8) -> N x 3 x p x p uint8 tensor, each patch turned and flipped at
    random when augmenting; reseedable like an albumentations Compose."""

    def __init__(self, augment: bool, seed: int) -> None:
        self.augment = augment
        self.set_random_seed(seed)

    def set_random_seed(self, seed: int) -> None:
        """Restart the random stream of the augmentation from `seed`."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, bag: np.ndarray) -> torch.Tensor:
        patches = bag
        if self.augment:
            turns, flips = self.rng.integers(0, 4, len(bag)), self.rng.random(len(bag)) < 0.5
            patches = np.stack([np.rot90(p[:, ::-1] if f else p, k) for p, k, f in zip(bag, turns, flips)])
        return torch.from_numpy(np.ascontiguousarray(patches.transpose(0, 3, 1, 2)))


def build_bag_transform(params: TrainParams, *, train: bool, seed: int = 0) -> BagTransform:
    """Return the bag transform: patches turned and flipped at random when `train` and the
    augmentation is dihedral (BASELINES.md §2.14).

    Whole bags are handled in numpy: an albumentations call per patch would cost more than the model.
    """
    return BagTransform(train and params.augment in ("dihedral", "flips_rot90"), seed)
