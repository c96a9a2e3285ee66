"""Metric definitions of BASELINES.md §4.2, checked against scikit-learn and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_score, roc_auc_score

from harness.metrics import classification_metrics, confusion, never_predicted


def test_binary_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    prob = np.clip(rng.normal(0.3 + 0.4 * y, 0.25), 0, 1)
    p = np.stack([1 - prob, prob], 1)
    m = classification_metrics(y, p)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, prob))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))


def test_sensitivity_is_recall_of_the_positive_class() -> None:
    # The IDC confusion of 004 (rows true, columns predicted): [[8855, 1145], [496, 9504]].
    y = np.array([0] * 10000 + [1] * 10000)
    pred = np.array([0] * 8855 + [1] * 1145 + [0] * 496 + [1] * 9504)
    p = np.eye(2)[pred]
    m = classification_metrics(y, p)
    assert m["sensitivity"] == pytest.approx(0.9504)
    assert m["specificity"] == pytest.approx(0.8855)
    assert m["accuracy"] == pytest.approx(0.91795)
    assert confusion(y, pred, 2).tolist() == [[8855, 1145], [496, 9504]]


def test_multiclass_auc_is_macro_one_vs_rest() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    p = rng.dirichlet(np.ones(4), 200) + np.eye(4)[y] * 0.3
    p /= p.sum(1, keepdims=True)
    assert classification_metrics(y, p)["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_auc_is_nan_when_one_class_is_absent() -> None:
    m = classification_metrics(np.zeros(5, dtype=int), np.tile([0.8, 0.2], (5, 1)))
    assert np.isnan(m["auc"]) and m["accuracy"] == 1.0


def test_a_class_never_predicted_has_precision_and_f1_zero_not_nan() -> None:
    y_true = np.array([0, 0, 1, 1])
    prob = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])  # never IDC
    metrics = classification_metrics(y_true, prob)
    assert (metrics["precision"], metrics["f1"], metrics["sensitivity"]) == (0.0, 0.0, 0.0)
    assert metrics["accuracy"] == 0.5
    matrix = confusion(y_true, prob.argmax(1), 2)
    assert never_predicted(matrix, ("non_idc", "idc")) == ["idc"]
    assert never_predicted(np.eye(2), ("non_idc", "idc")) == []
