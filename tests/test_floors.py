"""Floor models: trivial baselines fitted on exactly the deep baselines' folds, never on test patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harness.data.splits import CV, TEST, patient_split
from harness.floors import FLOORS, fit_floor_folds, floor_features


def _manifest(rng: np.random.Generator) -> pd.DataFrame:
    patients = np.repeat([f"p{i:02d}" for i in range(20)], 10)
    labels = rng.integers(0, 2, len(patients))
    return pd.DataFrame(
        {"rel_path": [f"{p}/{i}.png" for i, p in enumerate(patients)], "patient_id": patients, "label": labels}
    )


@pytest.mark.parametrize("name", FLOORS)
def test_a_sentinel_test_patient_never_reaches_fit(name: str) -> None:
    rng = np.random.default_rng(0)
    manifest = _manifest(rng)
    split = patient_split(manifest, folds=4, test_fraction=0.2, seed=0)
    test_rows = split.rows(split=TEST)
    sentinel = manifest.patient_id.iloc[test_rows[0]]
    # The sentinel's images are the only ones of class 2: a model that saw one would give class 2
    # some probability; fitted on the training folds alone, it cannot.
    rows = np.flatnonzero(manifest.patient_id == sentinel)
    manifest.loc[rows, "label"] = 2
    features = rng.normal(size=(len(manifest), 8)).astype(np.float32)
    features[rows] = 50.0
    folds = fit_floor_folds(name, features, manifest, split, num_classes=3, seed=0)
    assert [f.fold for f in folds] == [0, 1, 2, 3]
    for fold in folds:
        assert not set(fold.train_rows) & set(test_rows)
        assert not set(fold.train_rows) & set(split.rows(split=CV, fold=fold.fold))
        assert set(fold.train_rows) | set(split.rows(split=CV, fold=fold.fold)) == set(split.rows(split=CV))
        assert (fold.test.predictions.prob_2 == 0).all() and (fold.val.predictions.prob_2 == 0).all()
        assert len(fold.test.predictions) == len(test_rows)


def test_majority_predicts_the_training_prior_and_the_forest_learns_colour() -> None:
    rng = np.random.default_rng(1)
    manifest = _manifest(rng)
    split = patient_split(manifest, folds=4, test_fraction=0.2, seed=0)
    # Class 1 patches are redder: a colour histogram separates them, a prior cannot.
    images = rng.integers(0, 120, size=(len(manifest), 12, 12, 3)).astype(np.uint8)
    images[manifest.label.to_numpy() == 1, :, :, 0] += 120
    features = floor_features(images)
    assert features.shape == (len(manifest), 16 * 16 * 3 + 3 * 16)
    assert np.allclose(features[:, -48:].reshape(-1, 3, 16).sum(2), 1.0)
    majority = fit_floor_folds("majority", features, manifest, split, num_classes=2, seed=0)
    labels = manifest.label.to_numpy()
    for fold in majority:
        prior = np.bincount(labels[fold.train_rows], minlength=2) / len(fold.train_rows)
        assert np.allclose(fold.test.predictions[["prob_0", "prob_1"]].to_numpy(), prior)
    forest = fit_floor_folds("colour_forest", features, manifest, split, num_classes=2, seed=0)
    assert min(f.test.metrics["accuracy"] for f in forest) == 1.0
