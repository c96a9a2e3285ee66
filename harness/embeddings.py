"""Embeddings of the stored images by a foundation-model encoder, computed once per content.

A cache is a float16 (N, D) .npy beside the prepared images, keyed by what its numbers depend on:
the encoder and its constructor overrides, the bytes of its weights file, the images (the manifest
hash and the stored size) and the encoder's input transform; not by where the weights file lies.
Every trial and fold memory-maps it read-only, as they do the patch cache. A sidecar .json says
in words what it holds; a new cache beside an older one of the same encoder and dataset prints
one line saying what changed, and the older one is kept (another sweep may read it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rich
import timm
import torch
from rich.progress import Progress

import baselines
from harness.atomic import replacing
from harness.data.cache import ReservedRows, open_patch_cache
from harness.data.prepare import PreparedData, manifests_beside
from harness.errors import InputError, disk_full
from harness.locking import file_lock
from harness.precision import resolve_device
from harness.preflight import room_for

if TYPE_CHECKING:
    from baselines.encoders import Encoder, EncoderPreset, EncoderRef

# float16 halves what every trial reads against float32 and keeps 11 significant bits. Measured on
# the IDC sample (1,326 patches, a random-init timm ViT of depth 4 and width 192): float16 storage
# moved embeddings by 1.7e-4 of their value (median), bf16 compute by 6e-3; a logistic-regression
# probe scored balanced accuracy 0.812 on float32, 0.807 on float16 (1 of 301 test predictions
# changed) and 0.803 on bf16's. So encoders compute in fp32 on every device (TF32 off): a cache is
# the same numbers wherever it was built, and a served probe recomputes what its runs read.
STORED_DTYPE = np.float16
PREFIX = "embeddings-"

# Given the stored images (N x H x W x 3 uint8, read-only), yields (first row, embeddings of the
# rows from there) blocks that together cover every row once, in any order.
Blocks = Callable[[np.ndarray], Iterable[tuple[int, np.ndarray]]]


@dataclass(frozen=True)
class EmbeddingRecipe:
    """What a cache's embeddings depend on: the encoder by reference (a preset name or timm:<arch>,
    its constructor overrides, its weights file and that file's sha256; no file: random init), the
    images (manifest hash, stored height and width) and, in words, what the encoder computes (timm's
    version, the architecture as built, the input transform and the pooling)."""

    encoder: EncoderRef
    manifest_hash: str
    stored_hw: tuple[int, int]
    transform: str

    def content(self) -> dict[str, Any]:
        """Return the recipe as JSON-ready values, without the weights file's path."""
        return {
            "encoder": self.encoder.name,
            "arch": dict(self.encoder.arch),
            "weights_sha256": self.encoder.sha256,
            "manifest_hash": self.manifest_hash,
            "stored_hw": list(self.stored_hw),
            "transform": self.transform,
        }

    def key(self) -> str:
        """Return 16 hex of a sha256 over the recipe's content (the weights file's bytes, not its path)."""
        canonical = json.dumps(self.content(), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _transform_words(preset: EncoderPreset) -> str:
    """Return what the encoder computes, in words, from its preset as built: timm's version, the
    architecture and its constructor arguments (a preset fixed later is another computation), the
    size it resizes to, the normalisation and the pooling."""
    size, kwargs = preset.input_size, ", ".join(f"{k}={v!r}" for k, v in sorted(preset.kwargs.items()))
    return (
        f"timm {timm.__version__} {preset.arch}({kwargs}); resized to {size}x{size} (bilinear, antialiased) "
        f"unless stored at that size; normalised with mean {tuple(preset.mean)} std {tuple(preset.std)}; "
        f"{preset.embedding} embedding"
    )


def embedding_recipe(data: PreparedData, encoder: EncoderRef) -> EmbeddingRecipe:
    """Return the recipe of `encoder` on the stored images of `data`. A weights file that is no
    weights file raises WeightsFileError naming it."""
    preset = baselines.resolved_preset(encoder.name, **encoder.arch)
    if encoder.weights is not None:
        baselines.check_weights_file(encoder.weights)
    stored = open_patch_cache(data.cache_path).shape[1:3]
    return EmbeddingRecipe(
        encoder=encoder,
        manifest_hash=data.manifest_hash,
        stored_hw=(int(stored[0]), int(stored[1])),
        transform=_transform_words(preset),
    )


def _slug(encoder: str) -> str:
    """Return `encoder` as part of a file name ("timm:vit_small" -> "timm-vit_small")."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", encoder)


def embeddings_path(data: PreparedData, recipe: EmbeddingRecipe) -> Path:
    """Return where the embeddings of `recipe` lie: beside `data`'s stored images, named by the
    encoder and the recipe's key (a .json of the same name describes them)."""
    return data.cache_path.parent / f"{PREFIX}{_slug(recipe.encoder.name)}-{recipe.key()}.npy"


def open_embeddings(path: Path) -> np.ndarray:
    """Return the embeddings at `path` as a read-only memory map of shape (N, D)."""
    return np.load(path, mmap_mode="r")


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """Run the block with CUDA's matrix products in full fp32 (TF32 off), then put the setting back."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def _embedded(
    images: np.ndarray, rows: np.ndarray, encoder: Encoder, *, device: str, batch_size: int
) -> Iterator[np.ndarray]:
    """Yield the float32 embeddings of `images` at `rows`, one batch at a time, computed in fp32."""
    encoder.eval().to(device)
    with torch.inference_mode(), _full_fp32():
        for start in range(0, len(rows), batch_size):
            # uint8 to the device, float there: a quarter of the bytes cross the bus.
            batch = torch.from_numpy(np.ascontiguousarray(images[rows[start : start + batch_size]])).to(device)
            yield encoder(batch.permute(0, 3, 1, 2).float().div_(255)).float().cpu().numpy()


def embed_rows(images: np.ndarray, rows: np.ndarray, encoder: Encoder, *, device: str, batch_size: int) -> np.ndarray:
    """Return the float32 embeddings (len(rows), encoder.dim) of stored images (N x H x W x 3
    uint8) at `rows`, `batch_size` images at a time as float [0, 1] NCHW (the encoder resizes and
    normalises them), in fp32 on every device."""
    blocks = list(_embedded(images, rows, encoder, device=device, batch_size=batch_size))
    return np.concatenate(blocks) if blocks else np.zeros((0, encoder.dim), np.float32)


class EncoderCompute:
    """compute(images, rows) -> float32 embeddings through the recipe's encoder, built on the
    first call (its weights file checked against the recipe's digest first) on `device` as
    resolved where it runs ('auto': CUDA when that machine or Ray task has it)."""

    def __init__(self, recipe: EmbeddingRecipe, device: str, batch_size: int) -> None:
        self.recipe, self.device, self.batch_size = recipe, device, batch_size
        self._encoder: Encoder | None = None

    def __call__(self, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if self._encoder is None:
            try:
                self._encoder = self.recipe.encoder.build()
            except baselines.WeightsFileError as exc:
                # A Ray task reads the file where it runs: say which machine found it changed.
                raise InputError(f"on {socket.gethostname()}: {exc}; no embeddings were written") from None
        return embed_rows(images, rows, self._encoder, device=resolve_device(self.device), batch_size=self.batch_size)


def _describe(recipe: EmbeddingRecipe, data: PreparedData, rows: int, dim: int, computed_on: str) -> dict[str, Any]:
    """Return the sidecar's content: the recipe in words, the data it came from, the array's shape."""
    return {
        "key": recipe.key(),
        **recipe.content(),
        "weights": str(recipe.encoder.weights) if recipe.encoder.weights else None,
        "manifest": data.manifest_path.name,
        "images": data.cache_path.name,
        "rows": rows,
        "dim": dim,
        "dtype": np.dtype(STORED_DTYPE).name,
        "computed_on": computed_on,
    }


def _older(data: PreparedData, recipe: EmbeddingRecipe) -> dict[str, Any] | None:
    """Return the sidecar of the newest other cache of the same encoder and dataset beside `data`."""
    same_dataset = {path.name for path in manifests_beside(data.manifest_path)}
    found = []
    for sidecar in data.cache_path.parent.glob(f"{PREFIX}*.json"):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue  # being replaced, or not ours: says nothing about this recipe
        if (
            meta.get("encoder") == recipe.encoder.name
            and meta.get("manifest") in same_dataset
            and meta.get("key") != recipe.key()
        ):
            found.append((sidecar.stat().st_mtime_ns, meta | {"file": sidecar.with_suffix(".npy").name}))
    return max(found, key=lambda found: found[0])[1] if found else None


def _prefix(digest: str | None) -> str:
    return digest[:12] if digest else "none (random init)"


def _why_new(data: PreparedData, recipe: EmbeddingRecipe) -> str | None:
    """Return the line saying why `recipe` needs new embeddings where an older cache of the same
    encoder and dataset lies (its weights file's bytes, the images, the transform, ...); None
    when there is none."""
    old = _older(data, recipe)
    if old is None:
        return None
    changes = []
    if old["weights_sha256"] != recipe.encoder.sha256:
        old_w, new_w = _prefix(old["weights_sha256"]), _prefix(recipe.encoder.sha256)
        changes.append(f"the weights file's bytes differ (sha256 {old_w} -> {new_w})")
    if old["manifest_hash"] != recipe.manifest_hash:
        changes.append(f"the images differ (manifest hash {old['manifest_hash'][:12]} -> {recipe.manifest_hash[:12]})")
    if old["stored_hw"] != list(recipe.stored_hw):
        changes.append(f"the images are stored at another size ({old['stored_hw']} -> {list(recipe.stored_hw)})")
    if old["transform"] != recipe.transform:
        changes.append(f"the input transform differs ({old['transform']} -> {recipe.transform})")
    if old["arch"] != json.loads(json.dumps(dict(recipe.encoder.arch), default=str)):
        changes.append(f"the architecture overrides differ ({old['arch']} -> {dict(recipe.encoder.arch)})")
    return f"embeddings of {recipe.encoder.name}: computing new ones, {'; '.join(changes)}; {old['file']} is kept"


def write_embeddings(
    data: PreparedData, recipe: EmbeddingRecipe, blocks: Blocks, *, computed_on: str, show_progress: bool
) -> Path:
    """Return the embeddings of `recipe` on `data`, reused when present; else written whole (under
    a file lock, so one process computes them) from what `blocks` yields, as float16, with a
    progress bar, after one line saying why when an older cache of the encoder lies beside them."""
    path = embeddings_path(data, recipe)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path
    with file_lock(path.with_suffix(".lock")):
        if path.exists() and meta_path.exists():
            return path  # another process wrote them while this one waited
        line = _why_new(data, recipe)
        if line:
            rich.get_console().print(line, soft_wrap=True, markup=False, highlight=False)
        try:
            with replacing(meta_path) as meta_tmp, replacing(path) as tmp:
                rows, dim = _fill(tmp, data, recipe, blocks, show_progress=show_progress)
                meta_tmp.write_text(json.dumps(_describe(recipe, data, rows, dim, computed_on), indent=1))
        except OSError as exc:
            if disk_full(exc):
                raise InputError(f"{path}: no space left on the device while writing the embeddings") from None
            raise
    return path


def _fill(
    tmp: Path, data: PreparedData, recipe: EmbeddingRecipe, blocks: Blocks, *, show_progress: bool
) -> tuple[int, int]:
    """Write every row's embeddings from `blocks` into a new .npy at `tmp`; returns its (rows, width).
    Non-finite values (NaN from the encoder, or beyond float16's range) raise InputError."""
    images = open_patch_cache(data.cache_path)
    array: ReservedRows | None = None
    dim = 0
    with Progress(disable=not show_progress) as progress:
        task = progress.add_task(f"embedding {len(images):,} images with {recipe.encoder.name}", total=len(images))
        for first, values in blocks(images):
            with np.errstate(over="ignore"):  # checked on the next line
                stored = values.astype(STORED_DTYPE)
            if not np.isfinite(stored).all():
                raise InputError(
                    f"{recipe.encoder.name} ({recipe.encoder.weights or 'random init'}) gives non-finite "
                    f"embeddings (NaN, or beyond float16's range) for rows {first}..{first + len(values) - 1} "
                    f"of {data.cache_path}"
                )
            if array is None:
                dim = stored.shape[1]
                room_for(tmp.parent, len(images) * dim * stored.itemsize, "embeddings in")
                array = ReservedRows(tmp, (len(images), dim), STORED_DTYPE)
            for offset, row in enumerate(stored):
                array[first + offset] = row
            progress.advance(task, len(values))
    if array is None:
        raise InputError(f"{data.cache_path}: no stored images to embed")
    array.flush()
    return len(images), dim


def _batches(compute: Callable[..., np.ndarray], batch_size: int) -> Blocks:
    """Return blocks of `batch_size` rows, in order, each computed as compute(images, rows)."""

    def blocks(images: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        for first in range(0, len(images), batch_size):
            yield first, compute(images, np.arange(first, min(first + batch_size, len(images))))

    return blocks


def ensure_embeddings(
    data: PreparedData,
    recipe: EmbeddingRecipe,
    *,
    device: str = "auto",
    batch_size: int = 64,
    show_progress: bool = True,
    compute: Callable[..., np.ndarray] | None = None,
) -> Path:
    """Return the path of the embeddings of `recipe` on `data`: reused when present, else computed
    here `batch_size` images at a time (in fp32) and written whole as float16.

    `compute(images, rows)` returns the embeddings of those rows of the stored images; None: the
    recipe's encoder through embed_rows (EncoderCompute, built only when the cache is missing).
    """
    compute = compute or EncoderCompute(recipe, resolve_device(device), batch_size)
    # The sidecar names the device that computed them: a given compute's own, where it has one.
    where = resolve_device(getattr(compute, "device", device))
    return write_embeddings(
        data, recipe, _batches(compute, batch_size), computed_on=f"{where} (fp32)", show_progress=show_progress
    )
