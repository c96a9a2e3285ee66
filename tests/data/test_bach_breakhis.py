"""BACH and BreakHis indexers, their splits, masks and protocol metrics."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from harness.data.datasets.bach import CLASS_NAMES, index_bach
from harness.data.datasets.breakhis import index_breakhis, numeric_core
from harness.data.masks import read_mask, tissue_fallback_mask
from harness.data.splits import patient_split
from harness.errors import InputError
from harness.metrics import grouped_accuracies, patient_accuracy


def test_breakhis_sample_manifest_has_the_readme_counts(breakhis_sample: Path) -> None:
    manifest = index_breakhis(breakhis_sample, allow_subset=True).manifest
    assert len(manifest) == 70
    assert manifest.class_name.value_counts().to_dict() == {"benign": 35, "malignant": 35}
    assert manifest.patient_folder.nunique() == 21
    assert manifest.magnification.value_counts().to_dict() == {40: 33, 400: 18, 200: 13, 100: 6}
    assert manifest.subtype.nunique() == 8
    # 14-22549AB, CD and G share a numeric core and form one group (BASELINES.md §1.2).
    assert set(manifest.patient_id[manifest.patient_folder.str.startswith("14-22549")]) == {"14-22549"}
    assert set(manifest.width) == {700} and set(manifest.height) == {460}


def _assert_digests_of_the_file_bytes(manifest: pd.DataFrame) -> None:
    expected = [hashlib.blake2b(Path(p).read_bytes(), digest_size=16).hexdigest() for p in manifest.path]
    assert manifest.digest.tolist() == expected


def test_breakhis_manifest_carries_the_digest_of_each_file(breakhis_sample: Path) -> None:
    _assert_digests_of_the_file_bytes(index_breakhis(breakhis_sample, allow_subset=True).manifest)


def test_bach_manifest_carries_the_digest_of_each_file(synthetic_bach: tuple[Path, Path]) -> None:
    _assert_digests_of_the_file_bytes(index_bach(synthetic_bach[0], allow_subset=True).manifest)


def test_breakhis_full_release_counts_are_checked_per_magnification(breakhis_sample: Path) -> None:
    with pytest.raises(InputError, match=r"40X benign 18/625, malignant 15/1370; 100X benign 3/644"):
        index_breakhis(breakhis_sample)


def test_breakhis_subtype_labels_and_folder_grouping(synthetic_breakhis: Path) -> None:
    manifest = index_breakhis(synthetic_breakhis, label="subtype", group_by="folder", allow_subset=True).manifest
    assert sorted(manifest.label.unique()) == list(range(8))
    assert (manifest.class_name == manifest.subtype).all()
    assert manifest.patient_id.nunique() == 9 and manifest.patient_folder.nunique() == 9


def test_breakhis_masks_are_found_by_image_name(synthetic_breakhis: Path) -> None:
    manifest = index_breakhis(synthetic_breakhis, roi_dir=synthetic_breakhis / "roi_masks", allow_subset=True).manifest
    assert len(manifest) == 72
    assert all(Path(m).name == Path(p).name for m, p in zip(manifest.roi_mask_path, manifest.path))


def test_breakhis_names_contradicting_their_folders_are_each_reported(tmp_path: Path, synthetic_breakhis: Path) -> None:
    root = tmp_path / "bkh"
    shutil.copytree(synthetic_breakhis, root)
    good = next(root.rglob("SOB_B_A-14-10000-40-001.png"))
    wrong_mag = good.parents[1] / "100X" / good.name
    shutil.move(good, wrong_mag)
    malignant_in_benign = good.parents[3] / "adenosis" / good.parents[1].name / "40X" / "SOB_M_A-14-10000-40-009.png"
    shutil.copy(wrong_mag, malignant_in_benign)
    with pytest.raises(InputError) as excinfo:
        index_breakhis(root, allow_subset=True)
    lines = str(excinfo.value).splitlines()
    assert f"{wrong_mag}: magnification folder '100X' disagrees with the name (expected '40X')" in lines
    assert any(line.startswith(f"{malignant_in_benign}: patient folder") for line in lines)
    assert len(lines) == 2


def test_no_breakhis_patient_is_on_both_sides_at_any_magnification(breakhis_sample: Path) -> None:
    manifest = index_breakhis(breakhis_sample, allow_subset=True).manifest
    split = patient_split(manifest, folds=3, test_fraction=0.25, seed=0)
    parts = split.assignments.assign(core=manifest.patient_folder.map(numeric_core), mag=manifest.magnification)
    owners = parts.groupby("core").apply(lambda g: {(s, f) for s, f in zip(g.split, g.fold)}, include_groups=False)
    assert owners.map(len).max() == 1, "a patient group spans two parts of the split"
    for mag, part in parts.groupby("mag"):
        assert part.groupby("core")[["split", "fold"]].nunique().max().max() == 1, f"{mag}X"


def test_patient_accuracy_is_the_mean_of_per_patient_accuracies() -> None:
    # Patient a: 3 of 4 right (0.75); patient b: 1 of 1 (1.0); patient c: 0 of 2 (0.0). Mean 0.5833.
    y_true = np.array([1, 1, 0, 0, 1, 0, 0])
    y_pred = np.array([1, 1, 0, 1, 1, 1, 1])
    patients = np.array(["a", "a", "a", "a", "b", "c", "c"])
    assert patient_accuracy(y_true, y_pred, patients) == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    frame = pd.DataFrame(
        {"label": y_true, "pred": y_pred, "patient_id": patients, "magnification": [40] * 4 + [400] * 3}
    )
    metrics = grouped_accuracies(frame)
    assert metrics["accuracy_40x"] == 0.75 and metrics["patient_accuracy_400x"] == pytest.approx(0.5)


def test_bach_manifest_uses_001s_class_order_and_flags_missing_patient_ids(synthetic_bach: tuple[Path, Path]) -> None:
    root, masks = synthetic_bach
    result = index_bach(root, roi_dir=masks, allow_subset=True)
    manifest = result.manifest
    assert len(manifest) == 24
    assert dict(zip(manifest.class_name, manifest.label)) == {name: i for i, name in enumerate(CLASS_NAMES)}
    assert manifest["flags"].str.contains("no_patient_id").all()
    assert manifest.patient_id.nunique() == 24
    assert all(Path(p).is_file() for p in manifest.roi_mask_path)
    with pytest.raises(InputError, match=r"found Normal 6, Benign 6, InSitu 6, Invasive 6; BACH part A has 100"):
        index_bach(root)


def test_bach_label_disagreeing_with_the_ground_truth_table_is_reported(
    tmp_path: Path, synthetic_bach: tuple[Path, Path]
) -> None:
    root = tmp_path / "bach"
    shutil.copytree(synthetic_bach[0], root)
    table = root / "ICIAR2018_BACH_Challenge" / "Photos" / "microscopy_ground_truth.csv"
    table.write_text(table.read_text().replace("n001.tif,Normal", "n001.tif,Benign"))
    with pytest.raises(
        InputError, match=r"n001.tif: microscopy_ground_truth.csv says 'Benign', the folder says 'Normal'"
    ):
        index_bach(root, allow_subset=True)


def test_missing_or_wrong_size_masks_exit_2_by_path(tmp_path: Path, synthetic_bach: tuple[Path, Path]) -> None:
    masks = tmp_path / "masks"
    shutil.copytree(synthetic_bach[1], masks)
    (masks / "b002.png").unlink()
    Image.new("L", (100, 100)).save(masks / "is003.png")
    result = CliRunner().invoke(
        app,
        [
            "data",
            "index",
            "--dataset",
            "bach",
            "--root",
            str(synthetic_bach[0]),
            "--roi-dir",
            str(masks),
            "--allow-subset",
            "--out",
            str(tmp_path / "m.parquet"),
        ],
    )
    assert result.exit_code == 2
    assert f"RoI mask {masks / 'b002.png'}: missing" in result.stderr
    assert (
        f"RoI mask {masks / 'is003.png'}: is 100x100, the image is 256x192 (expected the same aspect ratio)"
        in result.stderr
    )
    assert not (tmp_path / "m.parquet").exists()


def test_masks_are_read_as_zero_one_at_any_size(synthetic_bach: tuple[Path, Path]) -> None:
    mask = read_mask(synthetic_bach[1] / "iv001.png", (96, 128))
    assert mask.shape == (96, 128) and set(np.unique(mask)) == {0, 1}


def test_tissue_fallback_finds_the_nuclei_dense_region(synthetic_bach: tuple[Path, Path]) -> None:
    root, masks = synthetic_bach
    with Image.open(next(root.rglob("iv002.tif"))) as im:
        image = np.asarray(im.convert("RGB"))
    truth = read_mask(masks / "iv002.png", image.shape[:2])
    fallback = tissue_fallback_mask(image)
    iou = (truth & fallback).sum() / (truth | fallback).sum()
    assert iou > 0.5
