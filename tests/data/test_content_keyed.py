"""Data is keyed by content: digests of the file bytes reach the manifest, split and cache keys,
a root whose pixels changed under the same names is noticed, and same-named duplicates must match."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from harness.config import DatasetSpec, ProtocolSpec
from harness.data.cache import open_patch_cache
from harness.data.datasets.idc import index_idc, write_synthetic_idc
from harness.data.manifest import manifest_hash, read_manifest, write_manifest
from harness.data.prepare import index_dataset, prepare
from harness.errors import InputError

CHANGED = "90002/1/90002_idx5_x51_y5101_class1.png"
DIFFERS = "differs from its last index"


def _repaint(path: Path) -> np.ndarray:
    """Overwrite the image at `path` with its colour negative, keeping name and size; returns the new pixels."""
    with Image.open(path) as im:
        pixels = 255 - np.asarray(im.convert("RGB"))
    Image.fromarray(pixels).save(path)
    return pixels


def _index(root: Path, out: Path) -> str:
    """Run `harness data index` on an IDC root, which must succeed; returns its stderr."""
    result = CliRunner().invoke(app, ["data", "index", "--root", str(root), "--allow-subset", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result.stderr


def test_digests_are_blake2b_of_the_file_bytes(tmp_path: Path) -> None:
    manifest = index_idc(write_synthetic_idc(tmp_path, patients=2), allow_subset=True).manifest
    expected = [hashlib.blake2b(Path(p).read_bytes(), digest_size=16).hexdigest() for p in manifest.path]
    assert manifest.digest.tolist() == expected
    assert manifest.digest.nunique() == len(manifest)


def test_changed_pixels_give_a_new_manifest_split_and_cache_and_one_line(tmp_path: Path) -> None:
    root = write_synthetic_idc(tmp_path / "idc", patients=6)
    spec = DatasetSpec(name="idc", root=root, allow_subset=True)
    protocol = ProtocolSpec(folds=2, test_fraction=0.25, seed=0)
    work = tmp_path / "_data"
    first = prepare(index_dataset(spec)[0], spec, protocol, work)
    again = prepare(index_dataset(spec)[0], spec, protocol, work)
    assert again.notes == first.notes == ()
    assert (again.manifest_hash, again.split_hash, again.cache_path) == (
        first.manifest_hash,
        first.split_hash,
        first.cache_path,
    )

    pixels = _repaint(root / CHANGED)
    changed = prepare(index_dataset(spec)[0], spec, protocol, work)
    assert changed.manifest_hash != first.manifest_hash
    assert changed.split_hash != first.split_hash
    assert changed.cache_path != first.cache_path and first.cache_path.exists()
    row = read_manifest(changed.manifest_path)[0].rel_path.tolist().index(CHANGED)
    np.testing.assert_array_equal(open_patch_cache(changed.cache_path)[row], pixels)
    assert len(changed.notes) == 1
    assert changed.notes[0].startswith(f"idc root {root.resolve()} {DIFFERS}")
    # The change is reported once: the record now holds the new content.
    assert prepare(index_dataset(spec)[0], spec, protocol, work).notes == ()


def test_data_index_prints_one_line_when_the_root_changed(tmp_path: Path) -> None:
    root = write_synthetic_idc(tmp_path / "idc", patients=3)
    out = tmp_path / "manifests" / "idc.parquet"
    assert DIFFERS not in _index(root, out)
    before = read_manifest(out)[1]["manifest_hash"]
    assert DIFFERS not in _index(root, out)
    _repaint(root / CHANGED)
    stderr = _index(root, out)
    lines = [line for line in stderr.splitlines() if DIFFERS in line]
    assert len(lines) == 1 and str(root.resolve()) in lines[0]
    assert read_manifest(out)[1]["manifest_hash"] != before


def test_identical_duplicate_tree_is_dropped_and_keeps_the_hash(tmp_path: Path) -> None:
    root = write_synthetic_idc(tmp_path, patients=3, enclosing_folder=True)
    single = manifest_hash(index_idc(root, allow_subset=True).manifest)
    shutil.copytree(root / "IDC_regular_ps50_idx5", root, dirs_exist_ok=True)
    result = index_idc(root, allow_subset=True)
    assert len(result.manifest) == 60 and manifest_hash(result.manifest) == single


def test_same_name_with_other_bytes_exits_2_naming_both_paths(tmp_path: Path) -> None:
    root = write_synthetic_idc(tmp_path / "idc", patients=3, enclosing_folder=True)
    shutil.copytree(root / "IDC_regular_ps50_idx5", root, dirs_exist_ok=True)
    inner, outer = root / "IDC_regular_ps50_idx5" / CHANGED, root / CHANGED
    _repaint(inner)
    out = tmp_path / "m.parquet"
    result = CliRunner().invoke(
        app, ["data", "index", "--root", str(root), "--allow-subset", "--skip-bad", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert f"{outer.resolve()} and {inner.resolve()}: same file name, different bytes" in result.stderr
    assert not out.exists()


def test_manifest_without_digests_asks_for_a_new_index(tmp_path: Path) -> None:
    manifest = index_idc(write_synthetic_idc(tmp_path / "idc", patients=2), allow_subset=True).manifest
    path = write_manifest(manifest, tmp_path / "m.parquet", root=tmp_path / "idc", meta={"dataset": "idc"})
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["digest"]), path)
    with pytest.raises(InputError, match=r"manifest lacks columns \[.digest.\] .*`harness data index`"):
        read_manifest(path)
