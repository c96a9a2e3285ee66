"""The embedding cache: keyed by what the embeddings depend on, computed once, written whole,
memory-mapped read-only, one line when an older cache of the encoder is replaced, and the same
rows from Ray tasks as from a local build."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import baselines
from harness.config import DatasetSpec, ProtocolSpec
from harness.data.cache import open_patch_cache
from harness.data.datasets.idc import write_synthetic_idc
from harness.data.prepare import PreparedData, index_dataset, prepare
from harness.embeddings import (
    EmbeddingRecipe,
    embed_rows,
    embedding_recipe,
    embeddings_path,
    ensure_embeddings,
    open_embeddings,
)
from harness.errors import InputError

TINY = "timm:vit_tiny_patch16_224"
TINY_ARCH: dict[str, Any] = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32}


def tiny_encoder() -> nn.Module:
    """The encoder these tests embed with, its random weights seeded."""
    torch.manual_seed(0)
    return baselines.create_encoder(TINY, None, **TINY_ARCH)


def _recipe(data: PreparedData, weights: Path | None = None, arch: dict[str, Any] = TINY_ARCH) -> EmbeddingRecipe:
    """Return the recipe of the tiny encoder (with `weights`, None: random init) on `data`."""
    return embedding_recipe(data, baselines.EncoderRef.of(TINY, weights, arch))


def _prepared(root: Path, work: Path) -> PreparedData:
    spec = DatasetSpec(name="idc", root=root, allow_subset=True)
    return prepare(index_dataset(spec)[0], spec, ProtocolSpec(folds=2, test_fraction=0.25, seed=0), work)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path) -> PreparedData:
    return _prepared(synthetic_idc, tmp_path_factory.mktemp("work"))


def _own_copy(prepared: PreparedData, folder: Path) -> PreparedData:
    """Return `prepared` with its stored images copied into `folder`, where no embeddings lie yet."""
    folder.mkdir()
    shutil.copy(prepared.cache_path.with_suffix(".json"), folder)
    return dataclasses.replace(prepared, cache_path=Path(shutil.copy(prepared.cache_path, folder)))


@pytest.fixture
def data(prepared: PreparedData, tmp_path: Path) -> PreparedData:
    """The module's prepared data, its images in a folder of this test's own."""
    return _own_copy(prepared, tmp_path / "cache")


def _weights(path: Path, seed: int) -> Path:
    """Write a small weights-like file of its own bytes (the cache digests bytes; it never loads it here)."""
    torch.save({"w": torch.randn(4, generator=torch.Generator().manual_seed(seed))}, path)
    return path


class Counting:
    """compute(images, rows) through the tiny encoder, counting the rows it embedded."""

    def __init__(self) -> None:
        self.rows = 0
        self.encoder = tiny_encoder()

    def __call__(self, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
        self.rows += len(rows)
        return embed_rows(images, rows, self.encoder, device="cpu", batch_size=64)


def test_key_changes_with_what_the_embeddings_depend_on_and_not_with_the_weights_path(tmp_path: Path) -> None:
    encoder = baselines.EncoderRef(TINY, TINY_ARCH, tmp_path / "a.pth", "ab" * 32)
    recipe = EmbeddingRecipe(encoder, "cd" * 32, (50, 50), "224, pooled")
    changed = {
        "manifest_hash": "01" * 32,
        "transform": "224, cls+mean",
        "stored_hw": (48, 48),
    }
    encoders = {
        "sha256": "ef" * 32,
        "arch": {**TINY_ARCH, "depth": 2},
        "name": "timm:vit_small_patch16_224",
    }
    keys = {field: dataclasses.replace(recipe, **{field: value}).key() for field, value in changed.items()}
    keys |= {
        field: dataclasses.replace(recipe, encoder=dataclasses.replace(encoder, **{field: value})).key()
        for field, value in encoders.items()
    }
    assert len({recipe.key(), *keys.values()}) == len(changed) + len(encoders) + 1
    assert len(recipe.key()) == 16
    moved = dataclasses.replace(encoder, weights=tmp_path / "elsewhere" / "b.pth")
    assert dataclasses.replace(recipe, encoder=moved).key() == recipe.key()


def test_recipe_digests_the_weights_bytes_not_their_path(data: PreparedData, tmp_path: Path) -> None:
    first = _weights(tmp_path / "a.pth", seed=0)
    copy = Path(shutil.copy(first, tmp_path / "copy.pth"))
    recipe = _recipe(data, first)
    assert recipe.encoder.sha256 == hashlib.sha256(first.read_bytes()).hexdigest()
    assert recipe.stored_hw == (50, 50) and recipe.manifest_hash == data.manifest_hash
    assert _recipe(data, copy).key() == recipe.key()
    assert _recipe(data, _weights(copy, seed=1)).key() != recipe.key()
    assert _recipe(data).encoder.sha256 is None
    with pytest.raises(baselines.WeightsFileError, match="never downloaded"):
        _recipe(data, tmp_path / "absent.pth")


def test_a_second_ensure_reuses_the_cache_without_computing(data: PreparedData) -> None:
    recipe, compute = _recipe(data), Counting()
    path = ensure_embeddings(data, recipe, show_progress=False, compute=compute)
    assert compute.rows == data.rows
    assert ensure_embeddings(data, recipe, show_progress=False, compute=compute) == path
    assert compute.rows == data.rows
    assert path == embeddings_path(data, recipe) and path.parent == data.cache_path.parent
    assert path.name.startswith("embeddings-timm-vit_tiny_patch16_224-")


def test_the_cache_is_a_read_only_float16_memmap_of_embed_rows(data: PreparedData) -> None:
    recipe = _recipe(data)
    torch.manual_seed(0)  # the encoder the cache builds (random init) is the one tiny_encoder() builds
    path = ensure_embeddings(data, recipe, device="cpu", batch_size=32, show_progress=False)
    stored = open_embeddings(path)
    assert isinstance(stored, np.memmap) and not stored.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        stored[0, 0] = 1
    images = open_patch_cache(data.cache_path)
    expected = embed_rows(images, np.arange(len(images)), tiny_encoder(), device="cpu", batch_size=50)
    assert stored.dtype == np.float16 and stored.shape == (data.rows, expected.shape[1])
    np.testing.assert_array_equal(stored, expected.astype(np.float16))
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["key"] == recipe.key() and meta["rows"] == data.rows and meta["dtype"] == "float16"
    assert meta["transform"] == recipe.transform and "bilinear" in meta["transform"]
    assert meta["computed_on"] == "cpu (fp32)"


def test_changed_weights_bytes_give_a_new_cache_with_one_line_and_keep_the_old(
    data: PreparedData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = _weights(tmp_path / "w.pth", seed=0)
    old = _recipe(data, weights)
    old_path = ensure_embeddings(data, old, show_progress=False, compute=Counting())
    assert capsys.readouterr().out == ""
    new = _recipe(data, _weights(weights, seed=1))
    new_path = ensure_embeddings(data, new, show_progress=False, compute=Counting())
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"embeddings of {TINY}: computing new ones, the weights file's bytes differ "
        f"(sha256 {old.encoder.sha256[:12]} -> {new.encoder.sha256[:12]}); {old_path.name} is kept"
    ]
    assert new_path != old_path and old_path.exists()


def test_changed_images_give_a_new_cache_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_synthetic_idc(tmp_path / "idc", patients=6)
    before = _prepared(root, tmp_path / "work")
    ensure_embeddings(before, _recipe(before), show_progress=False, compute=Counting())
    changed = next(root.rglob("*class1.png"))
    with Image.open(changed) as im:
        Image.fromarray(255 - np.asarray(im.convert("RGB"))).save(changed)
    after = _prepared(root, tmp_path / "work")
    capsys.readouterr()
    ensure_embeddings(after, _recipe(after), show_progress=False, compute=Counting())
    [line] = capsys.readouterr().out.splitlines()
    assert f"the images differ (manifest hash {before.manifest_hash[:12]} -> {after.manifest_hash[:12]})" in line
    assert "weights" not in line


def test_a_build_failing_midway_leaves_no_file(data: PreparedData) -> None:
    recipe, compute = _recipe(data), Counting()

    def failing(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if rows[0] > 0:
            raise RuntimeError("encoder lost midway")
        return compute(images, rows)

    with pytest.raises(RuntimeError, match="midway"):
        ensure_embeddings(data, recipe, batch_size=64, show_progress=False, compute=failing)
    assert compute.rows == 64
    left = {p.name for p in data.cache_path.parent.iterdir()} - {data.cache_path.name}
    assert left == {data.cache_path.with_suffix(".json").name, embeddings_path(data, recipe).with_suffix(".lock").name}
    ensure_embeddings(data, recipe, show_progress=False, compute=compute)
    assert open_embeddings(embeddings_path(data, recipe)).shape[0] == data.rows


def test_non_finite_embeddings_are_refused_in_one_line(data: PreparedData) -> None:
    recipe = _recipe(data)

    def overflowing(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.full((len(rows), 4), 1e6, np.float32)

    with pytest.raises(InputError, match="non-finite embeddings .* for rows 0..63"):
        ensure_embeddings(data, recipe, show_progress=False, compute=overflowing)
    assert not embeddings_path(data, recipe).exists()


@pytest.mark.usefixtures("local_ray")
def test_ray_chunks_give_the_rows_a_local_build_gives(data: PreparedData, tmp_path: Path) -> None:
    from harness.sweep._embeddings import embed_on_cluster

    recipe = _recipe(data)

    def compute(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
        # Each row's own numbers, from numpy alone: a Ray worker starts without importing torch.
        return images[rows].reshape(len(rows), -1)[:, :16].astype(np.float32) / 255

    path = embed_on_cluster(data, recipe, compute, batch_size=32, chunk_rows=90, show_progress=False)
    assert "Ray tasks on CPUs (fp32), 90 rows each" in path.with_suffix(".json").read_text()
    local = _own_copy(data, tmp_path / "local")
    local_path = ensure_embeddings(local, recipe, show_progress=False, compute=compute)
    assert json.loads(local_path.with_suffix(".json").read_text())["computed_on"] == "cpu (fp32)"
    np.testing.assert_array_equal(open_embeddings(path), open_embeddings(local_path))


def test_a_sweep_builds_each_distinct_recipe_once_for_its_embedding_baselines(
    prepared: PreparedData, tmp_path: Path, synthetic_idc: Path
) -> None:
    from harness.config import load_experiment
    from harness.sweep._embeddings import prepare_embeddings

    from .conftest import experiment_dict, write_experiment

    arch = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 16}
    weights = baselines.write_random_encoder("phikon", tmp_path / "phikon.safetensors", **arch)
    fixed = {"encoder": "phikon", "encoder_arch": arch}
    entries = [{"name": p, "pretrained": str(weights), "fixed": fixed} for p in ("linear_probe", "mlp_probe")]
    data = experiment_dict(synthetic_idc, tmp_path / "out", baselines=[*entries, "cancernet"])
    config = load_experiment(write_experiment(tmp_path / "e.yaml", data))
    own = _own_copy(prepared, tmp_path / "cache")
    paths = prepare_embeddings(config, own, show_progress=False)
    assert set(paths) == {"linear_probe", "mlp_probe"} and len(set(paths.values())) == 1
    [built] = set(paths.values())
    assert built == embeddings_path(own, embedding_recipe(own, baselines.EncoderRef.of("phikon", weights, arch)))
    assert open_embeddings(built).shape == (own.rows, baselines.encoder_dim("phikon", **arch))
