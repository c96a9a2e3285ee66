"""Synthetic H&E-like images with a learnable signal, from which each dataset module writes a small
tree in its own layout (for tests and sample-less machines).

Class 1 (IDC) patches carry many dark, purple nuclei on a pink, textured background; class 0 carry
few. Each patient gets a mild stain tint, several times weaker than the nuclei signal: with a tint
as strong as the class difference in mean colour, a model learns darkness, which does not transfer
to unseen patients.
"""

from __future__ import annotations

import numpy as np


def synthetic_patch(rng: np.random.Generator, label: int, tint: np.ndarray, *, size: int) -> np.ndarray:
    """Return one size x size x 3 uint8 patch whose nuclei density depends on `label`."""
    background = np.array([225.0, 170.0, 205.0]) + tint
    image = np.broadcast_to(background, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size]
    # Stroma-like texture at two scales: real patches are far from flat, and flat patches give
    # activations so small that BatchNorm's running statistics cannot catch up in a short test.
    coarse = rng.normal(0, 15, (size // 5, size // 5, 1)).repeat(5, 0).repeat(5, 1)
    image += coarse + rng.normal(0, 10, image.shape)
    nuclei = rng.poisson(40 if label == 1 else 3)
    for _ in range(nuclei):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(2.0, 4.5)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[disk] = np.array([95.0, 55.0, 140.0]) + tint * 0.5 + rng.normal(0, 6, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def blob_image(
    rng: np.random.Generator, height: int, width: int, label: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return an H&E-like RGB image whose nuclei-dense region grows with the class, and its RoI mask."""
    image = np.empty((height, width, 3))
    image[:] = np.array([225.0, 170.0, 205.0]) + rng.normal(0, 3, 3)
    coarse = rng.normal(0, 15, (height // 8 + 1, width // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:height, :width]
    image += coarse + rng.normal(0, 10, image.shape)
    yy, xx = np.mgrid[0:height, 0:width]
    # The RoI is an ellipse whose area grows with the class; nuclei crowd inside it.
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    radius = (0.12 + 0.28 * label / max(classes - 1, 1)) * min(height, width)
    mask = (((yy - cy) / radius) ** 2 + ((xx - cx) / (radius * 1.3)) ** 2 <= 1).astype(np.uint8)
    inside = np.argwhere(mask)
    for y, x in inside[rng.choice(len(inside), size=len(inside) // 60, replace=False)]:
        r = rng.uniform(1.5, 3.5) * height / 200
        top, left = max(int(y - r), 0), max(int(x - r), 0)
        window = image[top : int(y + r) + 1, left : int(x + r) + 1]
        wy, wx = np.mgrid[top : top + window.shape[0], left : left + window.shape[1]]
        window[(wy - y) ** 2 + (wx - x) ** 2 <= r**2] = np.array([95.0, 55.0, 140.0]) + rng.normal(0, 6, 3)
    return np.clip(image, 0, 255).astype(np.uint8), mask
