"""Torch datasets over the packed caches: images (with their RoI masks when present) and MIL bags.

Items are dicts: `image` (uint8, C x H x W, or N x C x p x p for a bag; normalised per batch),
`label`, and `mask` (1 x H x W, 0/1) when the cache has masks.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from .augmentations import AugmentParams
from .bags import BagGrid, cut_bag
from .transforms import build_bag_transform, build_transform


class ImageTransform(Protocol):
    """An image (and mask) pipeline to uint8 tensors whose random stream restarts from a seed:
    an albumentations Compose, or the pipeline that only lays images out."""

    def __call__(self, *, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]: ...
    def set_random_seed(self, seed: int) -> None: ...


class BagPipeline(Protocol):
    """A bag's pipeline to a uint8 tensor whose random stream restarts from a seed."""

    def __call__(self, bag: np.ndarray) -> torch.Tensor: ...
    def set_random_seed(self, seed: int) -> None: ...


class ImageDataset(Dataset):
    """Rows of an image cache with their labels (and masks), through an albumentations pipeline;
    geometric transforms move the mask with the image."""

    def __init__(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        transform: ImageTransform,
        masks: np.ndarray | None = None,
    ) -> None:
        self.images, self.masks = images, masks
        self.rows = np.asarray(rows)
        self.labels = np.asarray(labels)[self.rows]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def raw(self, i: int) -> np.ndarray:
        """Return item i as stored (H x W x 3 uint8), before any transform, as an array of its own.

        A copy, not a view of the read-only cache: a pipeline that leaves an image unchanged (a flip
        not drawn, no resize) would hand the cache's memory to torch, which warns about it."""
        return np.array(self.images[self.rows[i]])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        if self.masks is None:
            return {"image": self.transform(image=self.raw(i))["image"], "label": int(self.labels[i])}
        out = self.transform(image=self.raw(i), mask=np.array(self.masks[self.rows[i]]))
        return {"image": out["image"], "label": int(self.labels[i]), "mask": out["mask"][None].float()}


class BagDataset(Dataset):
    """Each image as a bag of grid patches (N x C x p x p), the bag through `transform`."""

    def __init__(
        self,
        images: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        transform: BagPipeline,
        grid: BagGrid,
    ) -> None:
        self.images = images
        self.rows = np.asarray(rows)
        self.labels = np.asarray(labels)[self.rows]
        self.transform, self.grid = transform, grid

    def __len__(self) -> int:
        return len(self.rows)

    def raw(self, i: int) -> np.ndarray:
        """Return the part of image i that the bag covers (H x W x 3 uint8)."""
        return np.asarray(self.images[self.rows[i]])[self.grid.crop]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        bag = self.transform(cut_bag(np.asarray(self.images[self.rows[i]]), self.grid))
        return {"image": bag, "label": int(self.labels[i])}


def part_dataset(
    images: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    params: AugmentParams,
    *,
    grid: BagGrid | None,
    train: bool,
    seed: int,
    keras: bool,
    masks: np.ndarray | None = None,
) -> ImageDataset | BagDataset:
    """Return the dataset of `rows` of `images` as a run of `params` reads them: bags cut on `grid`
    when one is given, else images (with `masks`); augmented only when `train`."""
    if grid is not None:
        return BagDataset(images, rows, labels, build_bag_transform(params, train=train, seed=seed), grid)
    transform = build_transform(params, stored_hw=tuple(images.shape[1:3]), train=train, seed=seed, keras=keras)
    return ImageDataset(images, rows, labels, transform, masks)
