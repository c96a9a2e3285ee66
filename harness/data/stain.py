"""Stain normalisation as a transform applied once when an image cache is built.

Reinhard (001's GuSA recipe) matches per-channel CIE-Lab mean and std to a reference image;
Macenko estimates each image's H&E stain vectors and maps its concentrations onto the
reference's. Both come from torchstain's numpy backend (numpy only, no second framework).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer, NumpyReinhardNormalizer

from harness.errors import InputError

StainMethod = Literal["none", "reinhard", "macenko"]


def load_rgb(path: Path) -> np.ndarray:
    """Return an image file as an RGB uint8 array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def stain_normaliser(method: StainMethod, reference: Path | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """Return a function RGB uint8 -> RGB uint8 normalised to `reference`, or None for method none."""
    if method == "none":
        return None
    if reference is None or not Path(reference).is_file():
        raise InputError(
            f"key 'dataset.stain_reference' = {str(reference)!r}: stain {method} needs an existing reference image"
        )
    target = load_rgb(Path(reference))
    if method == "reinhard":
        reinhard = NumpyReinhardNormalizer()
        reinhard.fit(target)
        return reinhard.normalize
    macenko = NumpyMacenkoNormalizer()
    macenko.fit(target)
    return lambda rgb: macenko.normalize(rgb, stains=False)[0]
