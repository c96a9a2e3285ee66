"""Stain normalisation against its published definitions, bags of patches, and the image cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer
from torchstain.numpy.utils import rgb2lab

from harness.data.bags import attention_to_pixels, bag_grid, cut_bag
from harness.data.cache import build_image_cache, image_cache_key, open_patch_cache
from harness.data.datasets.bach import index_bach
from harness.data.manifest import manifest_hash
from harness.data.stain import stain_normaliser
from harness.data.synthetic import blob_image


def _lab_stats(rgb: np.ndarray) -> np.ndarray:
    lab = rgb2lab(rgb.astype(np.float32) / 255).reshape(-1, 3)
    return np.stack([lab.mean(0), lab.std(0)])


def test_reinhard_matches_the_references_lab_mean_and_std(tmp_path: Path) -> None:
    reference, _ = blob_image(np.random.default_rng(0), 128, 160, 3, 4)
    source, _ = blob_image(np.random.default_rng(1), 128, 160, 0, 4)
    source = np.clip(source.astype(int) + [-30, 10, -20], 0, 255).astype(np.uint8)  # another stain
    path = tmp_path / "reference.png"
    Image.fromarray(reference).save(path)
    normalised = stain_normaliser("reinhard", path)(source)
    assert np.abs(_lab_stats(normalised) - _lab_stats(reference)).max() < 2.0
    assert np.abs(_lab_stats(source) - _lab_stats(reference)).max() > 10.0


def test_macenko_recovers_a_known_stain_matrix() -> None:
    # Beer-Lambert: I = Io exp(-HE C) with known unit stain vectors (columns H, E) and concentrations.
    he = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    he /= np.linalg.norm(he, axis=0)
    rng = np.random.default_rng(0)
    concentrations = np.stack([rng.gamma(2.0, 0.4, 20000), rng.gamma(2.0, 0.3, 20000)])
    # As in tissue, some pixels hold one stain only (Macenko's extreme angles find those); eosin
    # absorbs little red, so its pure pixels need enough of it to pass Macenko's OD > 0.15 filter.
    concentrations[1, :3000] = 0
    concentrations[0, 3000:6000] = 0
    concentrations[1, 3000:6000] = rng.uniform(2.5, 4.0, 3000)
    image = (240 * np.exp(-(he @ concentrations))).T.reshape(100, 200, 3)
    normaliser = NumpyMacenkoNormalizer()
    normaliser.fit(np.clip(image, 0, 255).astype(np.uint8))
    estimated = normaliser.HERef / np.linalg.norm(normaliser.HERef, axis=0)
    cosine = (estimated * he).sum(0)
    assert cosine.min() > 0.999, cosine


def test_a_bag_covers_the_centred_crop_exactly_once() -> None:
    image = np.arange(460 * 700 * 3, dtype=np.int64).reshape(460, 700, 3)
    grid = bag_grid(460, 700)
    assert (grid.rows, grid.cols, grid.top, grid.left) == (16, 25, 6, 0)
    bag = cut_bag(image, grid)
    assert bag.shape == (400, 28, 28, 3)
    # Patch 26 is grid row 1, column 1.
    np.testing.assert_array_equal(bag[26], image[6 + 28 : 6 + 56, 28:56])
    covered = np.sort(bag.reshape(-1, 3)[:, 0])
    np.testing.assert_array_equal(covered, np.sort(image[6:454, :, 0].ravel()))
    assert (bag_grid(384, 512).rows, bag_grid(384, 512).cols) == (13, 18)  # BACH: 234 instances


def test_attention_is_drawn_back_onto_the_right_pixels() -> None:
    grid = bag_grid(384, 512)
    attention = np.zeros(grid.rows * grid.cols)
    attention[2 * grid.cols + 5] = 1.0  # row 2, column 5
    full = attention_to_pixels(attention, 384, 512, grid)
    top, left = grid.top + 2 * 28, grid.left + 5 * 28
    assert full[top : top + 28, left : left + 28].min() == 1.0
    assert full.sum() == 28 * 28


def test_image_cache_holds_resized_images_and_masks(tmp_path: Path, synthetic_bach: tuple[Path, Path]) -> None:
    root, masks = synthetic_bach
    manifest = index_bach(root, roi_dir=masks, allow_subset=True).manifest
    key = image_cache_key(manifest_hash(manifest), (96, 128), "none", None, "files")
    images, mask_path = build_image_cache(manifest, key, tmp_path, size=(96, 128), masks="files")
    cached, cached_masks = open_patch_cache(images), open_patch_cache(mask_path)
    assert cached.shape == (24, 96, 128, 3) and cached_masks.shape == (24, 96, 128)
    with Image.open(manifest.path[3]) as im:
        expected = np.asarray(im.convert("RGB").resize((128, 96), Image.BILINEAR))
    np.testing.assert_array_equal(cached[3], expected)
    with Image.open(manifest.roi_mask_path[3]) as im:
        assert cached_masks[3].sum() == (np.asarray(im.convert("L").resize((128, 96), Image.NEAREST)) > 0).sum()
    stamp = images.stat().st_mtime_ns
    assert build_image_cache(manifest, key, tmp_path, size=(96, 128), masks="files")[0].stat().st_mtime_ns == stamp
    assert image_cache_key(manifest_hash(manifest), (96, 128), "none", None, "tissue") != key


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_stain_needs_an_existing_reference(method: str) -> None:
    from harness.errors import InputError

    with pytest.raises(InputError, match=f"stain {method} needs an existing reference image"):
        stain_normaliser(method, Path("/nowhere.png"))
