"""The IDC indexer against the real sample and against broken trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from harness.data.datasets.idc import index_idc, write_synthetic_idc
from harness.errors import InputError


def test_sample_manifest_has_the_published_patient_and_class_counts(idc_sample: Path) -> None:
    manifest = index_idc(idc_sample, allow_subset=True).manifest
    assert len(manifest) == 1326
    assert manifest.patient_id.nunique() == 24
    assert manifest.label.value_counts().to_dict() == {0: 827, 1: 499}
    per_patient = manifest.groupby(["patient_id", "label"]).size()
    # Rows of the table in ../shared/data/README.md.
    assert (per_patient["8863", 0], per_patient["8863", 1]) == (50, 11)
    assert (per_patient["10273", 0], per_patient["10273", 1]) == (55, 64)
    assert set(manifest.class_name) == {"non_idc", "idc"}


def test_sample_edge_patches_are_flagged_with_their_true_size(idc_sample: Path) -> None:
    manifest = index_idc(idc_sample, allow_subset=True).manifest
    edge = manifest[manifest["flags"].str.contains("edge_patch")]
    assert len(edge) == 4
    assert set(edge.width) == {50} and set(edge.height) <= {35, 40}


def test_full_release_totals_are_enforced_unless_subset_allowed(idc_sample: Path) -> None:
    with pytest.raises(InputError, match=r"found 1,326 patches .* 277,524"):
        index_idc(idc_sample)


def test_name_folder_and_grid_are_parsed(synthetic_idc: Path) -> None:
    manifest = index_idc(synthetic_idc, allow_subset=True).manifest
    # The generator puts patch i of patient p, class c at x = 1 + 50 i, y = 1 + 50 (100 c + p).
    row = manifest[manifest.rel_path == "90003/1/90003_idx5_x51_y5151_class1.png"].iloc[0]
    assert (row.patient_id, row.x, row.y, row.label) == ("90003", 51, 5151, 1)
    assert Path(row.path).is_absolute()


def test_enclosing_folder_and_duplicate_tree_are_accepted(tmp_path: Path) -> None:
    write_synthetic_idc(tmp_path, patients=3, enclosing_folder=True)
    shutil.copytree(tmp_path / "IDC_regular_ps50_idx5", tmp_path, dirs_exist_ok=True)
    result = index_idc(tmp_path, allow_subset=True)
    assert len(result.manifest) == 3 * 20
    assert result.warnings == ["dropped 60 byte-identical duplicates (the archive's second copy of the tree)"]


def _broken_tree(root: Path) -> tuple[Path, Path]:
    write_synthetic_idc(root, patients=3)
    wrong_folder = root / "90001" / "0" / "90001_idx5_x1_y1_class1.png"
    shutil.copy(root / "90001" / "1" / "90001_idx5_x1_y5051_class1.png", wrong_folder)
    corrupt = root / "90002" / "1" / "90002_idx5_x9_y9_class1.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return wrong_folder, corrupt


def test_bad_files_are_reported_by_path(tmp_path: Path) -> None:
    wrong_folder, corrupt = _broken_tree(tmp_path)
    with pytest.raises(InputError) as excinfo:
        index_idc(tmp_path, allow_subset=True)
    lines = str(excinfo.value).splitlines()
    assert len(lines) == 2
    assert f"{wrong_folder}: class1 in the name disagrees with class folder '0'" in lines
    assert any(line.startswith(f"{corrupt}: does not decode") for line in lines)


def test_skip_bad_leaves_bad_files_out_and_says_which(tmp_path: Path) -> None:
    wrong_folder, corrupt = _broken_tree(tmp_path)
    result = index_idc(tmp_path, allow_subset=True, skip_bad=True)
    assert len(result.manifest) == 60
    assert {p.split(":")[0] for p in result.problems} == {str(wrong_folder), str(corrupt)}


def test_root_without_patches_names_the_layout(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match=r"no IDC patches found .*<patient>/<0\|1>/"):
        index_idc(tmp_path)


def test_edge_patch_drop_option_removes_them(tmp_path: Path) -> None:
    write_synthetic_idc(tmp_path, patients=2, edge_patches=2)
    result = index_idc(tmp_path, allow_subset=True, edge_patches="drop")
    assert len(result.manifest) == 38
    with Image.open(next(tmp_path.rglob("*_x1_y1_class0.png"))) as im:
        assert im.size == (50, 35)
