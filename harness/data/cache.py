"""Small patches packed once into a uint8 memory-mapped array, so an epoch decodes no PNG."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from PIL import Image
from rich.progress import track


def cache_path(cache_dir: Path, manifest_hash: str, patch_size: int) -> Path:
    """Return where the cache of a manifest lives: keyed by its hash and the patch size."""
    return cache_dir / f"patches-{manifest_hash[:16]}-{patch_size}px.npy"


def load_padded(path: str | Path, patch_size: int) -> tuple[np.ndarray, bool]:
    """Decode one patch as RGB uint8, replicate-padded bottom/right to patch_size; returns (pixels, padded)."""
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    h, w = pixels.shape[:2]
    if (h, w) == (patch_size, patch_size):
        return pixels, False
    # Edge patches are padded, never resized: resizing would change the patch's scale.
    return np.pad(pixels, ((0, patch_size - h), (0, patch_size - w), (0, 0)), mode="edge"), True


def build_patch_cache(
    manifest: pd.DataFrame, manifest_hash: str, cache_dir: Path, *, patch_size: int = 50, show_progress: bool = False
) -> Path:
    """Pack every manifest row, in manifest order, into an (N, size, size, 3) uint8 .npy; returns its path.

    An existing cache for the same manifest hash is reused. A sidecar JSON records the hash and the
    rows that were padded.
    """
    path = cache_path(cache_dir, manifest_hash, patch_size)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    array = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(manifest), patch_size, patch_size, 3))
    padded = []
    for i, file in enumerate(track(manifest.path, description="packing patches", disable=not show_progress)):
        array[i], was_padded = load_padded(file, patch_size)
        if was_padded:
            padded.append(i)
    array.flush()
    del array
    meta = {"manifest_hash": manifest_hash, "rows": len(manifest), "patch_size": patch_size, "padded_rows": padded}
    meta_tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
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
