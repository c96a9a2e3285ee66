"""The memory-mapped patch cache returns exactly the pixels of the PNG files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from harness.config import TrainParams
from harness.data import cache as cache_module
from harness.data.cache import build_patch_cache, open_patch_cache, padded_rows
from harness.data.dataset import part_dataset
from harness.data.datasets.idc import index_idc
from harness.data.manifest import manifest_hash


def test_cache_returns_the_decoded_png_pixels(tmp_path: Path, idc_sample: Path, monkeypatch) -> None:
    # A map of 7 patches at a time: every row still lands in its place across 190 remaps.
    monkeypatch.setattr(cache_module, "MAPPED_BYTES", 7 * 50 * 50 * 3 + 1)
    manifest = index_idc(idc_sample, allow_subset=True).manifest
    cache = open_patch_cache(build_patch_cache(manifest, manifest_hash(manifest), tmp_path))
    assert cache.shape == (1326, 50, 50, 3) and cache.dtype == np.uint8
    for i, path in enumerate(manifest.path):
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        h, w = pixels.shape[:2]
        np.testing.assert_array_equal(cache[i, :h, :w], pixels, err_msg=path)


def test_edge_patches_are_replicate_padded_and_recorded(tmp_path: Path, idc_sample: Path) -> None:
    manifest = index_idc(idc_sample, allow_subset=True).manifest
    path = build_patch_cache(manifest, manifest_hash(manifest), tmp_path)
    cache = open_patch_cache(path)
    edge = manifest.index[manifest["flags"].str.contains("edge_patch")].tolist()
    assert padded_rows(path) == edge
    for i in edge:
        h = int(manifest.height[i])
        # Every padded row repeats the last real row (bottom edge replication).
        np.testing.assert_array_equal(cache[i, h:], np.repeat(cache[i, h - 1 : h], 50 - h, axis=0))


def test_cache_is_built_once_per_manifest_hash(tmp_path: Path, synthetic_idc: Path) -> None:
    manifest = index_idc(synthetic_idc, allow_subset=True).manifest
    digest = manifest_hash(manifest)
    first = build_patch_cache(manifest, digest, tmp_path)
    stamp = first.stat().st_mtime_ns
    second = build_patch_cache(manifest, digest, tmp_path)
    assert second == first and second.stat().st_mtime_ns == stamp
    other = build_patch_cache(manifest.iloc[:10], manifest_hash(manifest.iloc[:10]), tmp_path)
    assert other != first and open_patch_cache(other).shape[0] == 10


def test_images_read_from_the_read_only_cache_reach_torch_without_a_warning(tmp_path: Path) -> None:
    # Flips at the stored size leave an image as it was when no flip is drawn: the pipeline's
    # tensor must not be the cache's read-only memory (torch warns, once per process, if it is).
    path = tmp_path / "cache.npy"
    np.save(path, np.random.default_rng(0).integers(0, 255, (8, 50, 50, 3), dtype=np.uint8))
    params = TrainParams(augment="flips", input_size=50)
    images = open_patch_cache(path)
    dataset = part_dataset(images, np.arange(8), np.zeros(8, int), params, grid=None, train=True, seed=0, keras=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = [dataset[i]["image"] for i in range(8)]
    for item, image in zip(items, images, strict=True):
        flips = (image, image[::-1], image[:, ::-1], image[::-1, ::-1])
        assert any(np.array_equal(item.numpy().transpose(1, 2, 0), flipped) for flipped in flips)
