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


def _blob_image(
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


def write_synthetic_bach(
    root: Path, *, per_class: int = 6, size: tuple[int, int] = (192, 256), masks: bool = True, seed: int = 0
) -> tuple[Path, Path | None]:
    """Write a BACH part A tree of real TIFF files (and RoI mask PNGs); returns (root, mask dir).

    Images are smaller than the published 2048x1536 to keep tests fast; the indexer flags their size.
    """
    from .bach import CLASS_NAMES, PREFIX

    rng = np.random.default_rng(seed)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    mask_dir = root / "roi_masks" if masks else None
    rows = []
    for label, name in enumerate(CLASS_NAMES):
        (photos / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_class + 1):
            image, mask = _blob_image(rng, size[0], size[1], label, len(CLASS_NAMES))
            file = f"{PREFIX[name]}{i:03d}.tif"
            Image.fromarray(image).save(photos / name / file)
            rows.append(f"{file},{name}")
            if mask_dir is not None:
                mask_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask * 255).save(mask_dir / f"{Path(file).stem}.png")
    (photos / "microscopy_ground_truth.csv").write_text("\n".join(rows) + "\n")
    return root, mask_dir


def write_synthetic_breakhis(
    root: Path,
    *,
    patients_per_subtype: int = 1,
    images_per_magnification: int = 2,
    size: tuple[int, int] = (460, 700),
    masks: bool = True,
    seed: int = 0,
) -> Path:
    """Write a BreakHis tree of real PNG files, every subtype and magnification; returns its root.

    Slide ids follow the release's pattern, and the first benign subtype gets a second folder
    with the same numeric core (like 14-22549AB / CD), so grouping by core is exercised. With
    `masks`, each image's RoI mask is written to `root/roi_masks/<image stem>.png`.
    """
    from .breakhis import SUBTYPES

    rng = np.random.default_rng(seed)
    base = root / "BreaKHis_v1" / "histology_slides" / "breast"
    for k, (code, subtype) in enumerate(SUBTYPES.items()):
        malignant = k >= 4
        cls = "M" if malignant else "B"
        slides = [f"{10000 + 100 * k + p}" for p in range(patients_per_subtype)]
        if k == 0:
            slides += [f"{slides[0]}AB"]
        for slide in slides:
            folder = base / ("malignant" if malignant else "benign") / "SOB" / subtype / f"SOB_{cls}_{code}_14-{slide}"
            for mag in (40, 100, 200, 400):
                (folder / f"{mag}X").mkdir(parents=True, exist_ok=True)
                for seq in range(1, images_per_magnification + 1):
                    image, mask = _blob_image(rng, size[0], size[1], int(malignant), 2)
                    name = f"SOB_{cls}_{code}-14-{slide}-{mag}-{seq:03d}"
                    Image.fromarray(image).save(folder / f"{mag}X" / f"{name}.png")
                    if masks:
                        (root / "roi_masks").mkdir(parents=True, exist_ok=True)
                        Image.fromarray(mask * 255).save(root / "roi_masks" / f"{name}.png")
    return root
