"""A small IDC-layout tree of real PNG files with a learnable signal, for tests and sample-less machines.

Class 1 (IDC) patches carry many dark, purple nuclei on a pink, textured background; class 0 carry
few. Each patient gets a mild stain tint, several times weaker than the nuclei signal: with a tint
as strong as the class difference in mean colour, a model learns darkness, which does not transfer
to unseen patients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .idc import PATCH_SIZE

_YY, _XX = np.mgrid[0:PATCH_SIZE, 0:PATCH_SIZE]


def synthetic_patch(rng: np.random.Generator, label: int, tint: np.ndarray) -> np.ndarray:
    """Return one 50x50x3 uint8 patch whose nuclei density depends on `label`."""
    background = np.array([225.0, 170.0, 205.0]) + tint
    image = np.broadcast_to(background, (PATCH_SIZE, PATCH_SIZE, 3)).copy()
    # Stroma-like texture at two scales: real patches are far from flat, and flat patches give
    # activations so small that BatchNorm's running statistics cannot catch up in a short test.
    coarse = rng.normal(0, 15, (PATCH_SIZE // 5, PATCH_SIZE // 5, 1)).repeat(5, 0).repeat(5, 1)
    image += coarse + rng.normal(0, 10, image.shape)
    nuclei = rng.poisson(40 if label == 1 else 3)
    for _ in range(nuclei):
        cy, cx = rng.uniform(0, PATCH_SIZE, 2)
        radius = rng.uniform(2.0, 4.5)
        disk = (_YY - cy) ** 2 + (_XX - cx) ** 2 <= radius**2
        image[disk] = np.array([95.0, 55.0, 140.0]) + tint * 0.5 + rng.normal(0, 6, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_idc(
    root: Path,
    *,
    patients: int = 20,
    patches_per_class: tuple[int, int] = (12, 8),
    edge_patches: int = 1,
    enclosing_folder: bool = False,
    seed: int = 0,
) -> Path:
    """Write an IDC tree under `root` and return the directory to index.

    Patient ids start at 90000 so they never collide with real ones. `edge_patches` patches of the
    first patient are cut to 50x35, like the border patches of the release.
    """
    rng = np.random.default_rng(seed)
    base = root / "IDC_regular_ps50_idx5" if enclosing_folder else root
    for p in range(patients):
        pid = str(90000 + p)
        tint = rng.normal(0, 3, 3)
        for label, count in enumerate(patches_per_class):
            folder = base / pid / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                x, y = 1 + 50 * i, 1 + 50 * (label * 100 + p)
                pixels = synthetic_patch(rng, label, tint)
                if p == 0 and label == 0 and i < edge_patches:
                    pixels = pixels[:35]
                Image.fromarray(pixels).save(folder / f"{pid}_idx5_x{x}_y{y}_class{label}.png")
    return root
