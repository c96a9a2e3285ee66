"""The statistics a leaderboard row carries beyond its point estimates: 95% bootstrap intervals over
the test images (whole patients resampled where patients hold several images) and a paired test of
each model against the reference model on the same images (McNemar for accuracy; DeLong for a
binary AUC, a paired bootstrap for a multi-class one)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness import stats
from harness.leaderboard.runs import BaselineRuns, RunSet


@dataclass(frozen=True)
class TestEvidence:
    """Intervals and paired tests of one model's test predictions."""

    model: str
    images: int
    accuracy: stats.Interval
    auc: stats.Interval
    vs_reference_accuracy: stats.PairedTest | None
    vs_reference_auc: stats.PairedTest | None


def probabilities(frame: pd.DataFrame) -> np.ndarray:
    """Return the N x C class probabilities of a predictions table."""
    columns = sorted((c for c in frame.columns if c.startswith("prob_")), key=lambda c: int(c.removeprefix("prob_")))
    return frame[columns].to_numpy(dtype=np.float64)


def patient_groups(frame: pd.DataFrame) -> np.ndarray | None:
    """Return the patient id per image when patients hold several images, else None (resample images)."""
    if "patient_id" not in frame or frame.patient_id.nunique() == len(frame):
        return None
    return frame.patient_id.astype(str).to_numpy()


def _accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def _paired(frame: pd.DataFrame, reference: pd.DataFrame, n_boot: int, seed: int
            ) -> tuple[stats.PairedTest | None, stats.PairedTest | None]:
    if not frame.rel_path.equals(reference.rel_path):
        return None, None
    labels = frame.label.to_numpy()
    probs, ref = probabilities(frame), probabilities(reference)
    accuracy = stats.mcnemar(probs.argmax(1) == labels, ref.argmax(1) == labels)
    try:
        if probs.shape[1] == 2:
            auc = stats.delong(labels, probs, ref)
        else:
            auc = stats.paired_bootstrap_auc(labels, probs, ref, patient_groups(frame), n_boot=n_boot, seed=seed)
    except ValueError:
        auc = None  # too few images of a class for the test
    return accuracy, auc


def gather_evidence(runs: RunSet, rows: list[BaselineRuns], model: str, reference: str | None, *,
                    n_boot: int = 2000, seed: int = 0) -> dict[str, TestEvidence]:
    """Return the evidence of each row's `model` (ensemble or best_trial) test predictions, keyed
    by row label; paired tests are against the row labelled `reference` (skipped for itself)."""
    frames = {r.label: runs.test_predictions(r, model) for r in rows}
    ref = frames.get(reference) if reference else None
    evidence = {}
    for label, frame in frames.items():
        if frame is None or frame.empty:
            continue
        labels, probs, groups = frame.label.to_numpy(), probabilities(frame), patient_groups(frame)
        paired = _paired(frame, ref, n_boot, seed) if ref is not None and label != reference else (None, None)
        evidence[label] = TestEvidence(
            model=model, images=len(frame),
            accuracy=stats.bootstrap_ci(_accuracy, labels, probs, groups, n_boot=n_boot, seed=seed),
            auc=stats.bootstrap_ci(stats.auc, labels, probs, groups, n_boot=n_boot, seed=seed),
            vs_reference_accuracy=paired[0], vs_reference_auc=paired[1],
        )
    return evidence


def format_p(test: stats.PairedTest | None) -> str:
    """Return a p-value as a table shows it ('-' when untested)."""
    if test is None or math.isnan(test.p_value):
        return "-"
    return "<0.001" if test.p_value < 0.001 else f"{test.p_value:.3f}"
