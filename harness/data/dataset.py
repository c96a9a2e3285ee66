"""Torch datasets over the packed patch cache."""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset


class PatchDataset(Dataset):
    """Rows of a patch cache with their labels, passed through an albumentations pipeline."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, transform: A.Compose) -> None:
        self.images = images
        self.rows = np.asarray(rows)
        self.labels = np.asarray(labels)[self.rows]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def raw(self, i: int) -> np.ndarray:
        """Return item i as stored (H x W x 3 uint8), before any transform."""
        return np.asarray(self.images[self.rows[i]])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(image=self.raw(i))["image"], int(self.labels[i])
