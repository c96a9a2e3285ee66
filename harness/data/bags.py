"""Bags of patches for attention-based MIL (BASELINES.md §2.14): a centred grid of square patches.

BreakHis 460x700 gives a 448x700 crop and 16 x 25 = 400 patches of 28 px; BACH at 384x512 a
364x504 crop and 13 x 18 = 234 patches. Patch k sits at grid row k // cols, column k % cols.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BagGrid:
    """Where the bag's patches lie in the image: crop offset, grid shape and patch size."""

    top: int
    left: int
    rows: int
    cols: int
    patch: int

    @property
    def crop(self) -> tuple[slice, slice]:
        """Return the (rows, columns) slices of the crop the patches tile."""
        return slice(self.top, self.top + self.rows * self.patch), slice(self.left, self.left + self.cols * self.patch)


def bag_grid(height: int, width: int, patch: int = 28) -> BagGrid:
    """Return the centred, non-overlapping grid of `patch`-pixel squares that fits an image."""
    rows, cols = height // patch, width // patch
    return BagGrid(
        top=(height - rows * patch) // 2, left=(width - cols * patch) // 2, rows=rows, cols=cols, patch=patch
    )


def cut_bag(image: np.ndarray, grid: BagGrid) -> np.ndarray:
    """Return the patches of an H x W x C image as N x patch x patch x C, row-major."""
    crop = image[grid.crop]
    p = grid.patch
    return (
        crop.reshape(grid.rows, p, grid.cols, p, -1).transpose(0, 2, 1, 3, 4).reshape(grid.rows * grid.cols, p, p, -1)
    )


def attention_to_pixels(attention: np.ndarray, height: int, width: int, grid: BagGrid) -> np.ndarray:
    """Return an H x W map with each patch's weight over its pixels (0 outside the crop)."""
    cells = np.asarray(attention, dtype=np.float64).reshape(grid.rows, grid.cols)
    full = np.zeros((height, width))
    full[grid.crop] = cells.repeat(grid.patch, 0).repeat(grid.patch, 1)
    return full
