"""The arguments of a Keras ImageDataGenerator, as the augmentations whose seeds ran one name them
(harness/data/augmentations.py): what the per-image pipeline (transforms) and the batched one
(batched) both draw from. Plain data, so the batched path imports neither albumentations nor OpenCV."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GeneratorArgs:
    """The geometric and brightness arguments of a Keras `ImageDataGenerator` (its own units:
    degrees for rotation and shear, fractions of the side for shifts, zoom range [1 - z, 1 + z])."""

    rotation_range: float = 0.0
    width_shift_range: float = 0.0
    height_shift_range: float = 0.0
    shear_range: float = 0.0
    zoom_range: float = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    brightness_range: tuple[float, float] | None = None
