"""The arguments of the Keras ImageDataGenerators the seeds ran, by augmentation name: what the
per-image pipeline (transforms) and the batched one (batched) both draw from. Plain data, so the
batched path imports neither albumentations nor OpenCV."""

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


# The augmentations whose seeds ran a Keras ImageDataGenerator: the CancerNet tutorial's (S-PIS) and
# 003 §3.3's list, which names exactly ImageDataGenerator's arguments.
KERAS_GENERATORS = {
    "pis": GeneratorArgs(
        rotation_range=20,
        width_shift_range=0.1,
        height_shift_range=0.1,
        shear_range=0.05,
        zoom_range=0.05,
        horizontal_flip=True,
        vertical_flip=True,
    ),
    "essex2023": GeneratorArgs(
        rotation_range=180,
        width_shift_range=0.1,
        height_shift_range=0.1,
        shear_range=10,
        zoom_range=0.1,
        horizontal_flip=True,
        vertical_flip=True,
        brightness_range=(0.8, 1.2),
    ),
}
