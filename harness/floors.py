"""Floor models: what a trivial model reaches on the same manifest, split and folds as the deep
baselines. `majority` predicts the training prior; `colour_forest` is a random forest on 16x16
downsampled pixels and per-channel colour histograms. On the IDC sample the forest is level with
the published CancerNet, which is what a leaderboard should say beside it (issue 8).

Each fold model is fitted on the training folds only and scored on its validation fold and on the
test set; the fold models' mean probability is the floor's ensemble, as for the deep baselines.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier

from harness.data.splits import CV, TEST, Split
from harness.evaluation import Evaluation, evaluation_of

FLOORS = ("majority", "colour_forest")
THUMBNAIL = 16
HISTOGRAM_BINS = 16


def floor_features(images: np.ndarray) -> np.ndarray:
    """Return one row per HxWx3 uint8 image: its 16x16 area-downsampled pixels in [0, 1] and a
    16-bin histogram per channel (fractions of the image's pixels)."""
    rows = []
    for image in images:
        thumb = cv2.resize(np.asarray(image), (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA) / 255.0
        hist = [
            np.histogram(image[..., c], bins=HISTOGRAM_BINS, range=(0, 256))[0] / image[..., c].size for c in range(3)
        ]
        rows.append(np.concatenate([thumb.ravel(), *hist]))
    return np.asarray(rows, dtype=np.float32)


def make_floor(name: str, seed: int) -> DummyClassifier | RandomForestClassifier:
    """Return an unfitted scikit-learn classifier for floor `name`."""
    if name == "majority":
        return DummyClassifier(strategy="prior")
    if name == "colour_forest":
        return RandomForestClassifier(
            n_estimators=200, min_samples_leaf=2, class_weight="balanced", random_state=seed, n_jobs=1
        )
    raise ValueError(f"unknown floor {name!r}; expected one of: {', '.join(FLOORS)}")


@dataclass
class FloorFold:
    """One fold model of a floor: the rows it was fitted on, and its validation and test evaluations."""

    fold: int
    train_rows: np.ndarray
    val: Evaluation
    test: Evaluation | None


def _probabilities(
    model: DummyClassifier | RandomForestClassifier, features: np.ndarray, num_classes: int
) -> np.ndarray:
    """Return N x num_classes probabilities, zero for a class the fold's training rows lacked."""
    prob = np.zeros((len(features), num_classes))
    prob[:, model.classes_] = model.predict_proba(features)
    return prob


def fit_floor_fold(
    name: str, features: np.ndarray, manifest: pd.DataFrame, split: Split, fold: int, *, num_classes: int, seed: int
) -> FloorFold:
    """Fit floor `name` on the rows of every fold but `fold`; returns the fold model's rows and
    evaluations (validation fold `fold`, and the test set when the split has one)."""
    labels = manifest.label.to_numpy()
    train_rows, val_rows, test_rows = (
        split.rows(split=CV, exclude_fold=fold),
        split.rows(split=CV, fold=fold),
        split.rows(split=TEST),
    )
    model = make_floor(name, seed).fit(features[train_rows], labels[train_rows])

    def evaluation(rows: np.ndarray) -> Evaluation:
        return evaluation_of(_probabilities(model, features[rows], num_classes), labels[rows], manifest.iloc[rows])

    return FloorFold(fold, train_rows, evaluation(val_rows), evaluation(test_rows) if len(test_rows) else None)


def fit_floor_folds(
    name: str, features: np.ndarray, manifest: pd.DataFrame, split: Split, *, num_classes: int, seed: int
) -> list[FloorFold]:
    """Return `fit_floor_fold` of every fold of `split`."""
    return [
        fit_floor_fold(name, features, manifest, split, fold, num_classes=num_classes, seed=seed)
        for fold in range(split.folds)
    ]
