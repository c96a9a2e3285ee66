"""RoI masks: checking user-given mask files, reading them, and the documented tissue fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Ruifrok & Johnston's H&E(-DAB) optical-density vectors, rows = stains.
_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED /= np.linalg.norm(_HED, axis=1, keepdims=True)


def check_mask(path: Path, image_size: tuple[int, int]) -> str | None:
    """Return why a mask file is unusable for an image of (width, height), or None if it is fine.

    A mask may be any size with the image's aspect ratio (it is resized with the image).
    """
    if not path.is_file():
        return "missing (expected a single-channel PNG named after the image)"
    try:
        with Image.open(path) as im:
            im.load()
            width, height = im.size
            colour = _colour_problem(im)
    except Exception as exc:  # PIL raises many types for damaged files
        return f"does not decode ({exc})"
    if colour is not None:
        return colour
    if abs(width / height - image_size[0] / image_size[1]) > 0.01:
        return f"is {width}x{height}, the image is {image_size[0]}x{image_size[1]} (expected the same aspect ratio)"
    return None


def _colour_problem(im: Image.Image) -> str | None:
    """Return why a mask's colour channels make it ambiguous, or None: a mask is single-channel,
    and an RGB(A) mask is read only when its three colour channels are equal."""
    if im.mode not in ("RGB", "RGBA"):
        return None
    pixels = np.asarray(im.convert("RGB"))
    if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
        return None
    return f"is {im.mode} with unequal colour channels (expected a single-channel PNG; which channel marks the RoI?)"


def read_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Return a mask file as a (height, width) = `size` uint8 array of 0/1 (non-zero = RoI), nearest resize."""
    with Image.open(path) as im:
        mask = im.convert("L").resize((size[1], size[0]), Image.Resampling.NEAREST)
    return (np.asarray(mask) > 0).astype(np.uint8)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Return Otsu's threshold of `values` (the split that maximises between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centres)
    total_weight, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total_weight) ** 2 / (weight * (total_weight - weight))
    return float(centres[np.nanargmax(between[:-1])])


def haematoxylin_density(rgb: np.ndarray) -> np.ndarray:
    """Return the haematoxylin optical density of an RGB uint8 image by colour deconvolution."""
    od = -np.log(np.clip(rgb.astype(np.float64), 1, 255) / 255)
    return (od.reshape(-1, 3) @ np.linalg.inv(_HED))[:, 0].reshape(rgb.shape[:2])


def tissue_fallback_mask(rgb: np.ndarray, cell: int = 16) -> np.ndarray:
    """Return the fallback RoI for images without masks: cells of `cell` px whose mean haematoxylin
    density is above Otsu's threshold (nuclei-dense regions), as a uint8 0/1 array of the image size.

    It stands in for 001's private expert outlines, is tagged in every run that uses it, and is
    never compared with published localisation numbers.
    """
    height, width = rgb.shape[:2]
    density = haematoxylin_density(rgb)
    rows, cols = height // cell, width // cell
    coarse = density[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell).mean((1, 3))
    cells = (coarse > otsu_threshold(coarse.ravel())).astype(np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[: rows * cell, : cols * cell] = cells.repeat(cell, 0).repeat(cell, 1)
    return mask
