"""Training batches of small patches drawn and augmented on the device, a batch at a time.

The per-image path (a DataLoader over ImageDataset, albumentations per image) is what large
images need; for small patches it is the bottleneck. Here a fold's training patches sit on the
device once, a seeded permutation picks each batch, and the augmentation runs on the whole batch
with parameters drawn per sample: flips and 90-degree turns, and Keras ImageDataGenerator's
affine family (rotation, shift, shear, zoom about the centre, "nearest" fill, bilinear sampling,
then flips and brightness) as `transforms.KerasImageDataGenerator` applies it one image at a time.
The resize to the input size is an index selection, the same pixels cv2's nearest-neighbour (or
Keras' PIL) picks. The same code runs on the CPU.

Parameters are drawn on the host (one seeded stream, whatever the device) and reach a GPU by
copies that do not wait for it: a blocking copy would stall the host until every step queued
before it had run, several times a batch.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .augmentations import AugmentParams, augmentation
from .keras_generators import GeneratorArgs


def batched_augmentation_supported(params: AugmentParams, stored_hw: tuple[int, int], keras: bool) -> bool:
    """Return True when the batched path computes this run's augmentation and resize: no change
    of size or a shrink, and the augmentation's batched form (turns need square patches)."""
    height, width = params.input_hw
    if height > stored_hw[0] or width > stored_hw[1]:
        return False
    square = height == width and stored_hw[0] == stored_hw[1]
    return augmentation(params.augment).has_batched_form(keras=keras, square=square)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Return `tensor` on `device`; a copy to a GPU goes through pinned memory without blocking, so
    the host does not wait for the work already queued there."""
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@functools.lru_cache(maxsize=32)
def _nearest_rows(source: int, target: int, keras: bool, device: torch.device) -> torch.Tensor:
    """Return the source indices a nearest-neighbour resize from `source` to `target` samples:
    PIL's (cv2 INTER_NEAREST_EXACT) under Keras semantics, else cv2's INTER_NEAREST."""
    scale = source / target
    offset = 0.5 if keras else 0.0
    return to_device(torch.tensor([min(math.floor((i + offset) * scale), source - 1) for i in range(target)]), device)


def resize_nearest(batch: torch.Tensor, hw: tuple[int, int], keras: bool) -> torch.Tensor:
    """Return a ... x H x W batch resized to `hw` by index selection (no-op at the same size)."""
    height, width = batch.shape[-2:]
    if (height, width) == tuple(hw):
        return batch
    rows = _nearest_rows(height, hw[0], keras, batch.device)
    cols = _nearest_rows(width, hw[1], keras, batch.device)
    return batch.index_select(-2, rows).index_select(-1, cols)


@dataclass
class DihedralDraw:
    """Per-sample flips and quarter turns, in the order albumentations applies them."""

    flip_h: torch.Tensor
    flip_v: torch.Tensor
    turns: torch.Tensor  # 0..3, applied counter-clockwise


def draw_dihedral(n: int, turns: bool, generator: torch.Generator) -> DihedralDraw:
    """Return flips (each with probability 1/2) and, when `turns`, a turn by k x 90 degrees applied
    with probability 1/2 (k uniform in 0..3) for `n` samples."""
    flips = torch.rand(2, n, generator=generator) < 0.5
    turned = torch.rand(n, generator=generator) < 0.5
    k = torch.randint(0, 4, (n,), generator=generator)
    return DihedralDraw(flips[0], flips[1], torch.where(turned & turns, k, torch.zeros_like(k)))


def _apply_to(chosen: torch.Tensor, batch: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Apply `op` in place to the samples of `batch` that are `chosen` (a boolean per sample)."""
    picked = chosen.nonzero().flatten()
    if len(picked):
        picked = to_device(picked, batch.device)
        batch[picked] = op(batch[picked])


def apply_dihedral(batch: torch.Tensor, draw: DihedralDraw) -> torch.Tensor:
    """Return N x C x H x W `batch` flipped left-right, then up-down, then turned, per sample."""
    out = batch.clone()
    _apply_to(draw.flip_h, out, lambda x: x.flip(-1))
    _apply_to(draw.flip_v, out, lambda x: x.flip(-2))
    for k in (1, 2, 3):
        _apply_to(draw.turns == k, out, functools.partial(torch.rot90, k=k, dims=(-2, -1)))
    return out


@dataclass
class KerasDraw:
    """Per-sample parameters of ImageDataGenerator.get_random_transform (its units)."""

    theta: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    shear: torch.Tensor
    zx: torch.Tensor
    zy: torch.Tensor
    flip_h: torch.Tensor
    flip_v: torch.Tensor
    brightness: torch.Tensor | None


def draw_keras(n: int, args: GeneratorArgs, hw: tuple[int, int], generator: torch.Generator) -> KerasDraw:
    """Return `n` draws from the ranges Keras draws from (shifts in pixels of an `hw` image)."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    zoom = (1 - args.zoom_range, 1 + args.zoom_range)
    flips = torch.rand(2, n, generator=generator) < 0.5
    return KerasDraw(
        theta=uniform(-args.rotation_range, args.rotation_range),
        tx=uniform(-args.height_shift_range, args.height_shift_range) * hw[0],
        ty=uniform(-args.width_shift_range, args.width_shift_range) * hw[1],
        shear=uniform(-args.shear_range, args.shear_range),
        zx=uniform(*zoom),
        zy=uniform(*zoom),
        flip_h=flips[0] & args.horizontal_flip,
        flip_v=flips[1] & args.vertical_flip,
        brightness=uniform(*args.brightness_range) if args.brightness_range else None,
    )


def keras_matrices(draw: KerasDraw, hw: tuple[int, int]) -> torch.Tensor:
    """Return N x 3 x 3 matrices from output (row, column) to input (row, column), built as
    `transforms.keras_affine` builds Keras' (float64)."""
    n = len(draw.theta)
    t, s = torch.deg2rad(draw.theta), torch.deg2rad(draw.shear)
    eye = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    rotation, shift, shear, zoom = eye.clone(), eye.clone(), eye.clone(), eye.clone()
    rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = t.cos(), -t.sin(), t.sin(), t.cos()
    shift[:, 0, 2], shift[:, 1, 2] = draw.tx, draw.ty
    shear[:, 0, 1], shear[:, 1, 1] = -s.sin(), s.cos()
    zoom[:, 0, 0], zoom[:, 1, 1] = draw.zx, draw.zy
    o_x, o_y = hw[0] / 2 - 0.5, hw[1] / 2 - 0.5
    to_centre, back = eye[0].clone(), eye[0].clone()
    to_centre[0, 2], to_centre[1, 2], back[0, 2], back[1, 2] = o_x, o_y, -o_x, -o_y
    matrix = to_centre @ rotation @ shift @ shear @ zoom @ back
    # Keras builds the matrix on (x, y) and swaps both axes to numpy's (row, column) order.
    return matrix[:, [1, 0, 2]][:, :, [1, 0, 2]]


def apply_keras(batch: torch.Tensor, draw: KerasDraw) -> torch.Tensor:
    """Return uint8 N x C x H x W `batch` through each sample's Keras random transform: bilinear
    affine with "nearest" fill, flips, then brightness (truncated as Keras and PIL do) or rounding."""
    n, _, height, width = batch.shape
    matrices = keras_matrices(draw, (height, width))
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    points = torch.stack([rows, cols, torch.ones_like(rows)], -1).view(1, -1, 3)
    source = (points @ matrices.transpose(1, 2))[..., :2]  # N x HW x (row, column)
    # Coordinates in float64 until normalised, as scipy keeps them; "border" repeats edge pixels.
    grid = torch.stack([source[..., 1] / (width - 1), source[..., 0] / (height - 1)], -1) * 2 - 1
    grid = to_device(grid.view(n, height, width, 2).float(), batch.device)
    out = F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    _apply_to(draw.flip_h, out, lambda x: x.flip(-1))
    _apply_to(draw.flip_v, out, lambda x: x.flip(-2))
    if draw.brightness is None:
        return out.round().clamp_(0, 255).to(torch.uint8)
    factor = to_device(draw.brightness.float(), batch.device).view(-1, 1, 1, 1)
    # Keras truncates to uint8 before PIL's Brightness, whose blend with black truncates too. A
    # value float32 sampling leaves a hair under a whole grey level (scipy's float64 lands on it)
    # is that level, or truncation would take one off.
    nearest = out.round()
    out = torch.where((out - nearest).abs() < 1e-3, nearest, out)
    return (out.clamp(0, 255).floor() * factor).floor().clamp_(0, 255).to(torch.uint8)


class BatchAugment:
    """A run's resize and augmentation on uint8 N x 3 x H x W batches, parameters drawn per sample
    from its own seeded generator (reseeded per epoch like the per-image pipeline)."""

    def __init__(self, augment: str, input_hw: tuple[int, int], *, keras: bool, seed: int = 0) -> None:
        self.augment, self.input_hw, self.keras = augment, (input_hw[0], input_hw[1]), keras
        self._form = augmentation(augment)
        self.generator = torch.Generator()
        self.set_random_seed(seed)

    def set_random_seed(self, seed: int) -> None:
        """Restart the random stream of the augmentation from `seed`."""
        self.generator.manual_seed(seed)

    def with_seed(self, seed: int) -> BatchAugment:
        """Return the same augmentation with a random stream of its own, started from `seed`."""
        return BatchAugment(self.augment, self.input_hw, keras=self.keras, seed=seed)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Return the batch resized to the input size and augmented."""
        form, hw, n = self._form, self.input_hw, len(batch)
        if self.keras and form.keras is not None:
            # Keras resizes on loading, before the generator's transform.
            batch = resize_nearest(batch, hw, self.keras)
            return apply_keras(batch, draw_keras(n, form.keras, hw, self.generator))
        if form.batched in ("flips", "dihedral"):
            batch = apply_dihedral(batch, draw_dihedral(n, form.batched == "dihedral", self.generator))
        return resize_nearest(batch, hw, self.keras)


class _Ordered:
    """Rows on the device in batches: shuffled by `generator` with the last partial batch dropped,
    as the per-image training loader does, or (`shuffle=False`, for evaluation) in order and all."""

    labels: torch.Tensor
    batch_size: int
    shuffle: bool
    generator: torch.Generator

    def __len__(self) -> int:
        drop_last = self.shuffle and len(self.labels) > self.batch_size
        return len(self.labels) // self.batch_size if drop_last else math.ceil(len(self.labels) / self.batch_size)

    def picks(self) -> Iterator[torch.Tensor]:
        """Yield each batch's row indices on the rows' device, in this epoch's order."""
        # The epoch's order is drawn on the host (the same on every device) and copied once.
        order = (
            torch.randperm(len(self.labels), generator=self.generator)
            if self.shuffle
            else torch.arange(len(self.labels))
        )
        order = to_device(order, self.labels.device)
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]


class DeviceBatches(_Ordered):
    """Patches on the device served in batches through a BatchAugment: shuffled with the last
    partial batch dropped, as the per-image training loader does, or (`shuffle=False`, for
    evaluation) in order and all of them."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        augment: BatchAugment,
        *,
        batch_size: int,
        device: str,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.augment, self.batch_size, self.shuffle = augment, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def drawn_with(self, seed: int) -> DeviceBatches:
        """Return batches of the same device patches, shuffled and augmented from streams of their
        own derived from `seed`; this object's streams are untouched."""
        # Two generators seeded alike would draw the same numbers for the order and the augmentation.
        order_seed, augment_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
        other = copy.copy(self)
        other.augment = self.augment.with_seed(augment_seed)
        other.generator = torch.Generator().manual_seed(order_seed)
        return other

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for picked in self.picks():
            yield {"image": self.augment(self.images.index_select(0, picked)), "label": self.labels[picked]}


class VectorBatches(_Ordered):
    """Embeddings (N x D) on the device served in batches of float32 vectors with their labels, in
    the order `_Ordered` draws. Embeddings are not augmented: `set_random_seed` leaves the order's
    own stream alone, as a DataLoader's sampler keeps its own generator."""

    def __init__(
        self,
        vectors: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        device: str,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        self.vectors = torch.from_numpy(np.asarray(vectors, dtype=np.float32)).to(device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def set_random_seed(self, seed: int) -> None:
        """Do nothing: there is no augmentation to reseed (the epoch's order has its own stream)."""
        del seed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for picked in self.picks():
            yield {"image": self.vectors.index_select(0, picked), "label": self.labels[picked]}


def fits_on_device(n_bytes: int, device: str, share: float) -> bool:
    """Return True when `n_bytes` fit in `share` of a CUDA device's memory (always on the CPU)."""
    if torch.device(device).type != "cuda":
        return True
    return n_bytes <= share * torch.cuda.get_device_properties(torch.device(device)).total_memory
