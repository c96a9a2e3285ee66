"""eva's BACH split and BreakHis protocol (`protocol.name: eva`) on generated trees of the published
file lists, on the real BreakHis sample, and at the experiment file's edge."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.config import load_experiment
from harness.data.datasets import DatasetSpec
from harness.data.datasets.bach import write_synthetic_bach
from harness.data.datasets.breakhis import EVA_LABELS, EVA_VAL_SLIDES, write_release_40x
from harness.data.prepare import index_dataset, prepare
from harness.data.protocols import named_split
from harness.data.splits import CV, TEST, ProtocolSpec
from harness.errors import InputError
from tests.conftest import experiment_dict, write_experiment


@pytest.fixture(scope="module")
def breakhis_40x(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetSpec, pd.DataFrame]:
    """BreakHis's 40X file list as released (1,995 tiny images), indexed."""
    root = write_release_40x(tmp_path_factory.mktemp("breakhis_40x"))
    spec = DatasetSpec(name="breakhis", root=root, allow_subset=True, label="eva", magnification=40)
    return spec, index_dataset(spec)[0]


def _patients_per_fold(manifest: pd.DataFrame, assignments: pd.DataFrame) -> list[set[str]]:
    cv = assignments.split == CV
    return [set(manifest.patient_id[cv & (assignments.fold == k)]) for k in sorted(set(assignments.fold[cv]))]


def test_eva_breakhis_keeps_40x_of_four_classes_and_its_14_slides_as_the_test_set(breakhis_40x) -> None:
    spec, manifest = breakhis_40x
    assert len(manifest) == 1995  # every 40X image of the release, all eight subtypes
    kept, split, notes = named_split(manifest, spec, "eva", folds=5, seed=0)
    parts = split.assignments.split
    assert (parts == CV).sum() == 1132 and (parts == TEST).sum() == 339  # eva's expected lengths
    assert set(kept.class_name) == set(EVA_LABELS) and set(kept.magnification) == {40}
    assert kept.label.tolist() == [EVA_LABELS.index(c) for c in kept.class_name]
    slides = kept.patient_folder.str.split("-", n=1).str[1]
    assert set(slides[(parts == TEST).to_numpy()]) == EVA_VAL_SLIDES
    assert not set(slides[(parts == CV).to_numpy()]) & EVA_VAL_SLIDES
    folds = _patients_per_fold(kept, split.assignments)
    assert len(folds) == 5 and all(not a & b for i, a in enumerate(folds) for b in folds[i + 1 :])
    # eva splits by slide folder: four numeric cores have folders on both sides, and the note says so.
    assert notes == [
        "protocol eva: 4 patient group(s) by the harness's grouping lie on both sides of its split, which "
        "kaiko-ai/eva draws by another id: 14-16184, 14-18842, 14-19979, 14-23060"
    ]


def test_eva_breakhis_grouped_by_folder_keeps_train_and_test_patient_disjoint(breakhis_40x) -> None:
    spec, _ = breakhis_40x
    by_folder = spec.model_copy(update={"group_by": "folder"})
    kept, split, notes = named_split(index_dataset(by_folder)[0], by_folder, "eva", folds=5, seed=0)
    test = (split.assignments.split == TEST).to_numpy()
    assert not set(kept.patient_id[test]) & set(kept.patient_id[~test]) and notes == []


def test_eva_bach_split_is_its_six_index_ranges_of_the_400(tmp_path: Path) -> None:
    root, _ = write_synthetic_bach(tmp_path, per_class=100, size=(8, 8), masks=False)
    spec = DatasetSpec(name="bach", root=root)
    kept, split, notes = named_split(index_dataset(spec)[0], spec, "eva", folds=5, seed=0)
    test = (split.assignments.split == TEST).to_numpy()
    assert (int((~test).sum()), int(test.sum())) == (268, 132) and notes == []
    # eva orders Benign, InSitu, Invasive, Normal: 41-58 and 60-89 are b042-b059 and b061-b090.
    assert kept.class_name[test].value_counts().to_dict() == {"Benign": 48, "Invasive": 31, "InSitu": 30, "Normal": 23}
    name = kept.rel_path.str.rsplit("/", n=1).str[1]
    assert set(name[test]) >= {"b042.tif", "b059.tif", "b061.tif", "is040.tif", "iv041.tif", "n046.tif"}
    assert not set(name[test]) & {"b041.tif", "b060.tif", "is039.tif", "n045.tif", "n069.tif"}
    assert len(_patients_per_fold(kept, split.assignments)) == 5


def test_eva_on_the_breakhis_sample_runs_on_what_is_there_and_says_what_is_missing(
    breakhis_sample: Path, tmp_path: Path
) -> None:
    spec = DatasetSpec(name="breakhis", root=breakhis_sample, allow_subset=True, label="eva", magnification=40)
    manifest = index_dataset(spec)[0]
    with pytest.raises(
        InputError, match=r"^protocol: the training part of eva's BreakHis protocol.*lower protocol.folds$"
    ):
        named_split(manifest, spec, "eva", folds=5, seed=0)
    data = prepare(manifest, spec, ProtocolSpec(name="eva", folds=2), tmp_path)
    assert data.class_names == EVA_LABELS and data.rows == 17
    assert any("6 of 1,132 training and 11 of 339 test images" in note for note in data.notes)
    assert "protocol eva: no fibroadenoma image in its test part on these data" in data.notes


def test_eva_refuses_data_with_no_image_in_its_test_part(tmp_path: Path) -> None:
    root, _ = write_synthetic_bach(tmp_path, per_class=6, size=(8, 8), masks=False)
    spec = DatasetSpec(name="bach", root=root, allow_subset=True)
    with pytest.raises(InputError, match=r"^protocol eva: 24 images of bach give 24 in its training and 0 in its test"):
        named_split(index_dataset(spec)[0], spec, "eva", folds=2, seed=0)


def test_eva_counts_are_checked_unless_allow_subset(breakhis_40x) -> None:
    spec, manifest = breakhis_40x
    strict = spec.model_copy(update={"allow_subset": False})
    one_less = manifest.drop(index=manifest.index[manifest.patient_folder == "14-18650"][:1])
    with pytest.raises(InputError, match=r"1,131 training and 339 test images, the release gives 1,132 and 339"):
        named_split(one_less, strict, "eva", folds=5, seed=0)


def _experiment(tmp_path: Path, root: Path, dataset: dict, protocol: dict) -> Path:
    data = experiment_dict(root, tmp_path / "out", dataset={"root": str(root), **dataset}, protocol=protocol)
    return write_experiment(tmp_path / "e.yaml", data)


def test_protocol_eva_in_an_experiment_file_fixes_breakhis_to_40x_and_its_four_classes(
    breakhis_sample: Path, tmp_path: Path
) -> None:
    config = load_experiment(_experiment(tmp_path, breakhis_sample, {"name": "breakhis"}, {"name": "eva", "folds": 2}))
    assert (config.dataset.label, config.dataset.magnification) == ("eva", 40)
    assert config.dataset.traits().class_names == EVA_LABELS


@pytest.mark.parametrize(
    ("dataset", "protocol", "message"),
    [
        (
            {"name": "breakhis", "magnification": 100},
            {"name": "eva"},
            "key 'dataset.magnification' = 100: protocol eva of breakhis takes 40",
        ),
        (
            {"name": "breakhis", "label": "eva"},
            {"name": "patient"},
            "key 'dataset.label' = 'eva': the class set of protocol eva; set protocol.name: eva",
        ),
        (
            {"name": "idc"},
            {"name": "eva"},
            "key 'protocol.name' = 'eva': not a protocol of dataset idc (its protocols: patient)",
        ),
        (
            {"name": "bach"},
            {"name": "eva", "test_fraction": 0.3},
            "key 'protocol.test_fraction': protocol eva fixes its test set",
        ),
    ],
)
def test_a_protocol_that_does_not_fit_the_dataset_is_one_line_naming_the_key(
    tmp_path: Path, dataset: dict, protocol: dict, message: str
) -> None:
    with pytest.raises(InputError) as raised:
        load_experiment(_experiment(tmp_path, tmp_path, dataset, protocol))
    assert message in str(raised.value) and "\n" not in str(raised.value)
