"""The leaderboard's metrics on a bootstrap resample given as counts: row i drawn w[i] times.

Accuracy, balanced accuracy, AUC, ECE and the Brier score depend on which rows a resample holds and how often, not on
their order, so counting the drawn rows gives the value gathering them would, without copying
and re-sorting tens of thousands of predictions per resample (the test set of the full IDC release
holds about 55,000). Each function prepares what does not change between resamples and returns
w -> value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Counted = Callable[[np.ndarray], float]


def _matrix(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    return np.stack([1 - probs, probs], axis=1) if probs.ndim == 1 else probs


def accuracy(labels: np.ndarray, probs: np.ndarray) -> Counted:
    """Return w -> the share of drawn images whose most probable class is their label."""
    correct = (np.asarray(probs).argmax(1) == labels).astype(np.float64)
    return lambda w: float(w @ correct / w.sum())


def balanced_accuracy(labels: np.ndarray, probs: np.ndarray) -> Counted:
    """Return w -> the mean over the classes drawn of the share of their drawn images predicted as them."""
    labels = np.asarray(labels)
    correct = (np.asarray(probs).argmax(1) == labels).astype(np.float64)
    classes = int(labels.max()) + 1 if labels.size else 0

    def counted(w: np.ndarray) -> float:
        drawn = np.bincount(labels, w, minlength=classes)
        right = np.bincount(labels, w * correct, minlength=classes)
        return float(np.mean(right[drawn > 0] / drawn[drawn > 0]))

    return counted


def brier_score(labels: np.ndarray, probs: np.ndarray) -> Counted:
    """Return w -> the Brier score of the drawn images (stats.brier_score's definition)."""
    probs = _matrix(probs)
    per_image = np.sum((probs - np.eye(probs.shape[1])[labels]) ** 2, axis=1) / (2 if probs.shape[1] == 2 else 1)
    return lambda w: float(w @ per_image / w.sum())


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> Counted:
    """Return w -> the ECE of the drawn images (stats.expected_calibration_error's bins)."""
    probs = _matrix(probs)
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)
    which = np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True)

    def ece(w: np.ndarray) -> float:
        counts = np.bincount(which, w, minlength=bins)
        right = np.bincount(which, w * correct, minlength=bins)
        gap = np.abs(right - np.bincount(which, w * confidence, minlength=bins))
        return float(gap[counts > 0].sum() / w.sum())

    return ece


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> Counted:
    """Return w -> the Mann-Whitney AUC of the drawn images (ties count one half); NaN with one class."""
    _, tie = np.unique(score, return_inverse=True)
    ties = int(tie.max()) + 1

    def counted(w: np.ndarray) -> float:
        above = np.bincount(tie, w * positive, minlength=ties)
        below = np.bincount(tie, w * ~positive, minlength=ties)
        m, n = above.sum(), below.sum()
        if m == 0 or n == 0:
            return math.nan
        # Each positive outranks the negatives of lower scores and ties with those of its own.
        lower = np.cumsum(below) - below
        return float(above @ (lower + below / 2) / (m * n))

    return counted


def auc(labels: np.ndarray, probs: np.ndarray) -> Counted:
    """Return w -> the ROC AUC of the drawn images as stats.auc computes it (class 1 of a binary
    task, else the unweighted mean of the one-vs-rest AUCs)."""
    probs = np.asarray(probs)
    if probs.ndim == 1:
        return _binary_auc(labels == 1, probs)
    if probs.shape[1] == 2:
        return _binary_auc(labels == 1, probs[:, 1])
    per_class = [_binary_auc(labels == k, probs[:, k]) for k in range(probs.shape[1])]
    return lambda w: float(np.mean([f(w) for f in per_class]))
