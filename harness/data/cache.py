"""Images packed once into uint8 memory-mapped arrays, so an epoch decodes no PNG or TIFF.

Small patches (IDC) are padded to a fixed size; large images (BACH, BreakHis) are resized once
to the working resolution, stain-normalised and packed with their RoI masks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, cast, overload

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from PIL import Image
from rich.progress import track

from harness.atomic import temporary_path
from harness.errors import InputError, disk_full
from harness.preflight import room_for

from .datasets import MaskSource
from .masks import read_mask, tissue_fallback_mask
from .records import content_digest


@contextmanager
def _building(*paths: Path | None, what: str) -> Iterator[None]:
    """Remove the temporary `paths` (None: none) when the block fails, however; a full disk becomes
    one line."""
    try:
        yield
    except BaseException as exc:
        for path in filter(None, paths):
            path.unlink(missing_ok=True)
        if disk_full(exc):
            raise InputError(f"{what}: no space left on the device while writing the cache") from None
        raise


@overload
def _temporary(path: Path) -> Path: ...
@overload
def _temporary(path: None) -> None: ...
def _temporary(path: Path | None) -> Path | None:
    """Return where `path` is written before it is moved in place (hidden, one per process)."""
    return temporary_path(path) if path is not None else None


# How much of a cache being written a process maps at once: the rows written are flushed and
# unmapped past it, so building a cache of the full IDC release (2.1 GB) stays within this.
MAPPED_BYTES = 256 * 1024**2


class ReservedRows:
    """A new .npy file of `shape` and `dtype` (uint8 unless said), written row by row (in order)
    through a memory map.

    Its bytes are allocated on disk first: writing through a map into a sparse file kills the
    process with SIGBUS when the disk fills, while allocating up front raises ENOSPC. Written rows
    are flushed and unmapped every MAPPED_BYTES, since mapped pages count as the process's memory.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: type[np.generic] = np.uint8) -> None:
        header = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        del header
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, path.stat().st_size)
        self.path = path
        row_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
        self.rows_per_map = max(1, MAPPED_BYTES // max(1, row_bytes))
        self._map: np.memmap | None = None
        self._first = 0

    def __setitem__(self, row: int, value: np.ndarray) -> None:
        if self._map is None or not self._first <= row < self._first + self.rows_per_map:
            self.flush()
            self._map, self._first = open_memmap(self.path, mode="r+"), row - row % self.rows_per_map
        self._map[row] = value

    def flush(self) -> None:
        """Write the mapped rows to the file and unmap them."""
        if self._map is not None:
            self._map.flush()
            self._map = None


PATCH_CACHE_PREFIX = "patches-"  # names a patch cache apart from a resized image cache


def cache_path(cache_dir: Path, manifest_hash: str, patch_size: int) -> Path:
    """Return where the cache of a manifest lives: keyed by its hash and the patch size."""
    return cache_dir / f"{PATCH_CACHE_PREFIX}{manifest_hash[:16]}-{patch_size}px.npy"


def is_patch_cache(path: Path) -> bool:
    """Return True when `path` is a patch cache (edge patches padded), not a resized image cache."""
    return path.name.startswith(PATCH_CACHE_PREFIX)


class StaleFiles(InputError):
    """Files that no longer hold the bytes their manifest rows digested, found as a cache read them:
    `now` maps each such row to its file's digest now (None: the file is gone). No cache is built."""

    def __init__(self, now: dict[int, str | None], rows: int) -> None:
        super().__init__(f"{len(now):,} of {rows:,} files changed since they were indexed; no cache was built")
        self.now = now


def _indexed_bytes(manifest: pd.DataFrame, what: str, show_progress: bool) -> Iterator[tuple[int, Any, bytes]]:
    """Yield (row number, row, file bytes) for every manifest row, reading each file once and
    checking its bytes against the row's digest, so a cache holds the pixels its manifest hash
    covers; raises StaleFiles after the last row when any file changed or is gone."""
    stale: dict[int, str | None] = {}
    rows = manifest.reset_index(drop=True)
    for i, row in enumerate(track(rows.itertuples(), total=len(rows), description=what, disable=not show_progress)):
        try:
            data = Path(cast(str, row.path)).read_bytes()  # the manifest's path columns hold str
        except FileNotFoundError:
            stale[i] = None
            continue
        if (digest := content_digest(data)) != row.digest:
            stale[i] = digest
            continue
        yield i, row, data
    if stale:
        raise StaleFiles(stale, len(rows))


def decode_rgb(data: bytes) -> np.ndarray:
    """Return the pixels of an encoded image as RGB uint8 (H x W x 3), converted as PIL converts."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def replicate_pad(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return patches (... x h x w x 3, h and w at most `size`) replicate-padded bottom and right
    to `size`, as the patch cache stores edge patches."""
    h, w = pixels.shape[-3:-1]
    if (h, w) == size:
        return pixels
    # Edge patches are padded, never resized: resizing would change the patch's scale.
    leading = [(0, 0)] * (pixels.ndim - 3)
    return np.pad(pixels, [*leading, (0, size[0] - h), (0, size[1] - w), (0, 0)], mode="edge")


def _padded(data: bytes, patch_size: int) -> tuple[np.ndarray, bool]:
    """Decode one patch as RGB uint8, replicate-padded bottom/right to patch_size; returns (pixels, padded)."""
    pixels = decode_rgb(data)
    return replicate_pad(pixels, (patch_size, patch_size)), pixels.shape[:2] != (patch_size, patch_size)


def load_padded(path: str | Path, patch_size: int) -> tuple[np.ndarray, bool]:
    """Decode the patch at `path` as the patch cache does; returns (pixels, padded)."""
    return _padded(Path(path).read_bytes(), patch_size)


def build_patch_cache(
    manifest: pd.DataFrame, manifest_hash: str, cache_dir: Path, *, patch_size: int = 50, show_progress: bool = False
) -> Path:
    """Pack every manifest row, in manifest order, into an (N, size, size, 3) uint8 .npy; returns its path.

    An existing cache for the same manifest hash is reused. A sidecar JSON records the hash and the
    rows that were padded. A file whose bytes differ from its row's digest raises StaleFiles.
    """
    path = cache_path(cache_dir, manifest_hash, patch_size)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path
    shape = (len(manifest), patch_size, patch_size, 3)
    room_for(cache_dir, int(np.prod(shape)), "patch cache in")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp, meta_tmp = _temporary(path), _temporary(meta_path)
    with _building(tmp, meta_tmp, what=str(path)):
        array = ReservedRows(tmp, shape)
        padded = []
        for i, _, data in _indexed_bytes(manifest, "packing patches", show_progress):
            array[i], was_padded = _padded(data, patch_size)
            if was_padded:
                padded.append(i)
        array.flush()
        meta = {"manifest_hash": manifest_hash, "rows": len(manifest), "patch_size": patch_size, "padded_rows": padded}
        meta_tmp.write_text(json.dumps(meta))
        os.replace(tmp, path)
        os.replace(meta_tmp, meta_path)
    return path


def open_patch_cache(path: Path) -> np.ndarray:
    """Return the cache as a read-only memory map of shape (N, size, size, 3)."""
    return np.load(path, mmap_mode="r")


def padded_rows(path: Path) -> list[int]:
    """Return the manifest rows that were replicate-padded when the cache was built."""
    return json.loads(path.with_suffix(".json").read_text())["padded_rows"]


def image_cache_key(manifest_hash: str, size: tuple[int, int], stain: str, reference: Path | None, masks: str) -> str:
    """Return the key of a resized cache: manifest, resolution, stain method and reference, mask source."""
    reference_digest = hashlib.sha256(Path(reference).read_bytes()).hexdigest()[:12] if reference else "none"
    text = f"{manifest_hash}|{size[0]}x{size[1]}|{stain}|{reference_digest}|{masks}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fill_images(
    manifest: pd.DataFrame,
    array: ReservedRows,
    mask_array: ReservedRows | None,
    *,
    size: tuple[int, int],
    normalise: Callable[[np.ndarray], np.ndarray] | None,
    masks: MaskSource,
    show_progress: bool = False,
) -> list[int]:
    """Decode, resize and stain-normalise every image into `array` (its mask into `mask_array`);
    returns the rows stain normalisation could not be applied to."""
    unnormalised = []
    for i, row, data in _indexed_bytes(manifest, "resizing images", show_progress):
        with Image.open(io.BytesIO(data)) as im:
            # PIL's bilinear filter widens with the scale factor, so a 4x reduction is anti-aliased.
            pixels = np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR))
        if mask_array is not None:
            mask_array[i] = (
                read_mask(cast(str, row.roi_mask_path), size) if masks == "files" else tissue_fallback_mask(pixels)
            )
        if normalise is not None:
            try:
                pixels = normalise(pixels)
            except np.linalg.LinAlgError:
                unnormalised.append(i)  # too little stain to estimate its vectors: kept as it is, and recorded
        array[i] = pixels
    return unnormalised


def build_image_cache(
    manifest: pd.DataFrame,
    key: str,
    cache_dir: Path,
    *,
    size: tuple[int, int],
    normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    masks: MaskSource = "none",
    show_progress: bool = False,
) -> tuple[Path, Path | None]:
    """Decode, resize to `size` (height, width), stain-normalise and pack every image once;
    returns the image .npy and, when `masks` is not none, the 0/1 mask .npy of the same size.

    Masks come from the manifest's `roi_mask_path` (`files`) or the haematoxylin fallback
    (`tissue`). An existing cache for the same key is reused by every trial and Ray worker. A file
    whose bytes differ from its row's digest raises StaleFiles.
    """
    path = cache_dir / f"images-{key}-{size[0]}x{size[1]}.npy"
    mask_path = path.with_name(path.name.replace("images-", "masks-")) if masks != "none" else None
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path, mask_path
    n = len(manifest)
    room_for(cache_dir, n * size[0] * size[1] * (3 + (mask_path is not None)), "image cache in")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp, meta_tmp, mask_tmp = _temporary(path), _temporary(meta_path), _temporary(mask_path)
    with _building(tmp, mask_tmp, meta_tmp, what=str(path)):
        array = ReservedRows(tmp, (n, *size, 3))
        mask_array = ReservedRows(mask_tmp, (n, *size)) if mask_tmp is not None else None
        unnormalised = _fill_images(
            manifest, array, mask_array, size=size, normalise=normalise, masks=masks, show_progress=show_progress
        )
        for done in (array, mask_array):
            if done is not None:
                done.flush()
        meta = {"key": key, "rows": n, "size": list(size), "masks": masks, "stain_not_applied_rows": unnormalised}
        meta_tmp.write_text(json.dumps(meta))
        os.replace(tmp, path)
        if mask_tmp is not None:
            assert mask_path is not None  # mask_tmp is its temporary
            os.replace(mask_tmp, mask_path)
        os.replace(meta_tmp, meta_path)
    return path, mask_path
