"""Albumentations pipelines: a run's augmentation (by name, harness/data/augmentations.py) and resize
of a uint8 image, into a uint8 tensor.

Normalisation happens per batch, on the training device (`normalise.batch_normaliser`).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import scipy.ndimage
import torch
from PIL import Image, ImageEnhance

from ._albumentations import A, ToTensorV2
from .augmentations import AugmentParams, augmentation
from .keras_generators import GeneratorArgs


def keras_affine(
    image: np.ndarray,
    theta: float = 0.0,
    tx: float = 0.0,
    ty: float = 0.0,
    shear: float = 0.0,
    zx: float = 1.0,
    zy: float = 1.0,
    *,
    order: int = 1,
) -> np.ndarray:
    """Return H x W x C `image` (float) transformed as Keras' `apply_affine_transform` does with
    channels last and fill_mode "nearest": theta and shear in degrees, tx along rows and ty along
    columns in pixels, zoom factors zx, zy; spline interpolation of `order` (Keras' default 1)."""
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    matrix = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    matrix = matrix @ np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    matrix = matrix @ np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    matrix = matrix @ np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    o_x, o_y = image.shape[0] / 2 - 0.5, image.shape[1] / 2 - 0.5
    matrix = (
        np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]]) @ matrix @ np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    )
    # Keras builds the matrix on (x, y) and swaps both axes to numpy's (row, column) order.
    matrix[:, [0, 1]] = matrix[:, [1, 0]]
    matrix[[0, 1]] = matrix[[1, 0]]
    channels = [
        scipy.ndimage.affine_transform(image[..., c], matrix[:2, :2], matrix[:2, 2], order=order, mode="nearest")
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=-1)


def keras_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Return `image` (H x W x 3, values in [0, 255]) scaled as ImageDataGenerator's brightness_range
    does: truncated to uint8, then PIL's ImageEnhance.Brightness (as uint8)."""
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(image.astype(np.uint8), "RGB")).enhance(factor))


class KerasImageDataGenerator(A.DualTransform):
    """Keras `ImageDataGenerator.random_transform` as an albumentations step: the same parameter
    draws and the same order (affine, horizontal flip, vertical flip, brightness) on a uint8 image.

    Keras keeps the interpolated image in float; here it is rounded back to uint8 (at most half a
    grey level) unless the brightness step, which truncates to uint8 in Keras too, comes last.
    Masks follow the geometry with nearest-neighbour interpolation."""

    def __init__(self, args: GeneratorArgs, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.args = args

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw one transform as Keras' `get_random_transform` does."""
        a, rng, (height, width) = self.args, self.random_generator, params["shape"][:2]
        zx, zy = rng.uniform(1 - a.zoom_range, 1 + a.zoom_range, 2) if a.zoom_range else (1.0, 1.0)
        return {
            "theta": rng.uniform(-a.rotation_range, a.rotation_range),
            "tx": rng.uniform(-a.height_shift_range, a.height_shift_range) * height,
            "ty": rng.uniform(-a.width_shift_range, a.width_shift_range) * width,
            "shear": rng.uniform(-a.shear_range, a.shear_range),
            "zx": zx,
            "zy": zy,
            "flip_h": a.horizontal_flip and rng.random() < 0.5,
            "flip_v": a.vertical_flip and rng.random() < 0.5,
            "brightness": rng.uniform(*a.brightness_range) if a.brightness_range else None,
        }

    def _geometry(self, image: np.ndarray, order: int, **params: Any) -> np.ndarray:
        keys = ("theta", "tx", "ty", "shear", "zx", "zy")
        out = keras_affine(image.astype(np.float32), **{k: params[k] for k in keys}, order=order)
        if params["flip_h"]:
            out = out[:, ::-1]
        if params["flip_v"]:
            out = out[::-1]
        return out

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        """Return the transformed uint8 image."""
        out = self._geometry(img, 1, **params)
        if params["brightness"] is not None:
            return keras_brightness(out, params["brightness"])
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        """Return the mask moved with the image."""
        return np.ascontiguousarray(self._geometry(mask[..., None], 0, **params)[..., 0]).astype(mask.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Name the constructor arguments (albumentations' serialisation)."""
        return ("args",)


class ToUint8Tensor:
    """The albumentations call signature, for a pipeline that only lays HxWx3 out as 3xHxW."""

    def __call__(self, *, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        out = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        if mask is not None:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(mask))
        return out

    def set_random_seed(self, seed: int) -> None:
        """Nothing to reseed: this pipeline draws no random numbers."""


def build_transform(
    params: AugmentParams, *, stored_hw: tuple[int, int], train: bool, seed: int = 0, keras: bool = False
) -> A.Compose | ToUint8Tensor:
    """Return the pipeline from a HxWx3 uint8 image (and mask) to a 3xHxW uint8 tensor.

    Images stored at `stored_hw` are resized to the run's input size: shrinking uses
    nearest-neighbour, as Keras `flow_from_directory` did for CancerNet's 50->48; enlarging uses
    bilinear. Augmentation runs only when `train`; with neither, no albumentations call is made.

    With `keras` (a Keras seed under source semantics) the resize is PIL's nearest-neighbour, which
    Keras' `load_img` uses (cv2's INTER_NEAREST samples other pixels), it comes first as in
    `flow_from_directory`, and a Keras augmentation runs as ImageDataGenerator defines it.
    """
    height, width = params.input_hw
    resize = []
    if (height, width) != tuple(stored_hw):
        shrink = cv2.INTER_NEAREST_EXACT if keras else cv2.INTER_NEAREST
        interpolation = shrink if height * width < stored_hw[0] * stored_hw[1] else cv2.INTER_LINEAR
        resize = [A.Resize(height, width, interpolation=interpolation)]
    chosen = augmentation(params.augment)
    if keras and train and chosen.keras is not None:
        steps = [*resize, KerasImageDataGenerator(chosen.keras)]
    else:
        steps = [*(chosen.per_image(params) if train else []), *resize]
    if not steps:
        return ToUint8Tensor()
    return A.Compose([*steps, ToTensorV2()], seed=seed)


class BagTransform:
    """Bag (N x p x p x 3 uint8) -> N x 3 x p x p uint8 tensor, each patch turned and flipped at
    random when augmenting; reseedable like an albumentations Compose."""

    def __init__(self, augment: bool, seed: int) -> None:
        self.augment = augment
        self.set_random_seed(seed)

    def set_random_seed(self, seed: int) -> None:
        """Restart the random stream of the augmentation from `seed`."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, bag: np.ndarray) -> torch.Tensor:
        patches = bag
        if self.augment:
            turns, flips = self.rng.integers(0, 4, len(bag)), self.rng.random(len(bag)) < 0.5
            patches = np.stack([np.rot90(p[:, ::-1] if f else p, k) for p, k, f in zip(bag, turns, flips)])
        return torch.from_numpy(np.ascontiguousarray(patches.transpose(0, 3, 1, 2)))


def build_bag_transform(params: AugmentParams, *, train: bool, seed: int = 0) -> BagTransform:
    """Return the bag transform: patches turned and flipped at random when `train` and the
    augmentation turns a bag's patches (dihedral; BASELINES.md §2.14).

    Whole bags are handled in numpy: an albumentations call per patch would cost more than the model.
    """
    return BagTransform(train and augmentation(params.augment).bag_turns, seed)
