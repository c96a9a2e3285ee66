"""The statistics a leaderboard row carries beyond its point estimates: 95% bootstrap intervals over
the test images (whole patients resampled where patients hold several images) of accuracy, balanced
accuracy, AUC and calibration, and the paired tests of a table's tested columns (McNemar for
accuracy; a paired bootstrap for balanced accuracy; DeLong for a binary AUC, a paired bootstrap for
a multi-class one): each model against the reference with
Holm-adjusted p-values, and every pair of models for the compact letter display."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from harness.leaderboard import stats
from harness.leaderboard.runs import BaselineRuns, RunSet

# The columns that carry paired tests, and the level at which the letters separate models.
TESTED = ("accuracy", "balanced_accuracy", "auc")
ALPHA = 0.05


@dataclass(frozen=True)
class TestEvidence:
    """Intervals of one model's test predictions: accuracy, balanced accuracy, AUC, expected
    calibration error, Brier."""

    model: str
    images: int
    accuracy: stats.Interval
    balanced_accuracy: stats.Interval
    auc: stats.Interval
    ece: stats.Interval
    brier: stats.Interval


@dataclass(frozen=True)
class ColumnTests:
    """The paired tests of one tested column (accuracy or AUC) of a table.

    `vs_reference`: each model's test against the reference, and `adjusted`: its Holm-adjusted p
    over that family (one test per model other than the reference). `letters`: the compact letter
    display from the family of all `pairs` pairs of models, Holm-adjusted, 'a' for the group of the
    highest value; models sharing a letter are not distinguishable at ALPHA.
    """

    vs_reference: dict[str, stats.PairedTest]
    adjusted: dict[str, float]
    letters: dict[str, str]
    pairs: int


@dataclass(frozen=True)
class TableEvidence:
    """The evidence of a table: per row label its intervals, per tested column its tests, the
    reference model, and the rows left out of the tests because they scored other test images."""

    reference: str | None
    rows: dict[str, TestEvidence]
    tests: dict[str, ColumnTests]
    other_images: list[str]


def probabilities(frame: pd.DataFrame) -> np.ndarray:
    """Return the N x C class probabilities of a predictions table."""
    columns = sorted((c for c in frame.columns if c.startswith("prob_")), key=lambda c: int(c.removeprefix("prob_")))
    return frame[columns].to_numpy(dtype=np.float64)


def patient_groups(frame: pd.DataFrame) -> np.ndarray | None:
    """Return the patient id per image when patients hold several images, else None (resample images)."""
    if "patient_id" not in frame or frame.patient_id.nunique() == len(frame):
        return None
    return frame.patient_id.astype(str).to_numpy()


def _aligned(frame: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame | None:
    """Return `frame` in the reference's image order, None when it scored other images."""
    if frame.rel_path.equals(reference.rel_path):
        return frame
    if frame.rel_path.is_unique and len(frame) == len(reference) and set(frame.rel_path) == set(reference.rel_path):
        return frame.set_index("rel_path").loc[reference.rel_path].reset_index()
    return None


@dataclass(frozen=True)
class _Scored:
    """One model's test predictions as the tests read them; `auc` and `balanced_accuracy` hold the
    metric on every bootstrap resample, which pair up between models on the same images (the
    paired bootstrap tests)."""

    labels: np.ndarray
    probs: np.ndarray
    groups: np.ndarray | None
    auc: stats.Replicates
    balanced_accuracy: stats.Replicates


def _paired(a: _Scored, b: _Scored) -> dict[str, stats.PairedTest | None]:
    """Return the tests of model `a` against model `b` on the same images, per tested column."""
    accuracy = stats.mcnemar(a.probs.argmax(1) == a.labels, b.probs.argmax(1) == a.labels)
    balanced = stats.paired_bootstrap_test(a.balanced_accuracy, b.balanced_accuracy, "balanced accuracies")
    tests: dict[str, stats.PairedTest | None] = {"accuracy": accuracy, "balanced_accuracy": balanced}
    if a.probs.shape[1] > 2:
        return tests | {"auc": stats.paired_bootstrap_test(a.auc, b.auc, "macro one-vs-rest AUCs")}
    try:
        return tests | {"auc": stats.delong(a.labels, a.probs, b.probs)}
    except ValueError:
        return tests | {"auc": None}  # too few images of a class for the test


def _column_tests(scored: dict[str, _Scored], reference: str, rows: dict[str, TestEvidence]) -> dict[str, ColumnTests]:
    """Return the tests of every tested column over all pairs of `scored` (reference second in its pairs)."""
    pairs = [(b, a) if a == reference else (a, b) for a, b in combinations(scored, 2)]
    results = {pair: _paired(scored[pair[0]], scored[pair[1]]) for pair in pairs}
    tests = {}
    for column in TESTED:
        found = {pair: result[column] for pair, result in results.items()}
        vs_reference = {a: t for (a, b), t in found.items() if b == reference and t is not None}
        adjusted = stats.holm(np.array([t.p_value for t in vs_reference.values()]))
        p = np.array([math.nan if t is None else t.p_value for t in found.values()])
        # Best first, so that 'a' marks the group of the highest value; NaN estimates last.
        value = {label: getattr(rows[label], column).estimate for label in scored}
        order = sorted(scored, key=lambda label: -value[label] if math.isfinite(value[label]) else math.inf)
        letters = stats.compact_letters(order, stats.different_pairs(list(found), p, ALPHA))
        tests[column] = ColumnTests(vs_reference, dict(zip(vs_reference, map(float, adjusted))), letters, len(pairs))
    return tests


def _scored(frame: pd.DataFrame, n_boot: int, seed: int) -> _Scored:
    labels, probs, groups = frame.label.to_numpy(), probabilities(frame), patient_groups(frame)

    def replicates(metric: stats.Metric) -> stats.Replicates:
        return stats.bootstrap_replicates(metric, labels, probs, groups, n_boot=n_boot, seed=seed)

    return _Scored(labels, probs, groups, replicates(stats.auc), replicates(stats.balanced_accuracy))


def _intervals(scored: _Scored, model: str, n_boot: int, seed: int) -> TestEvidence:
    def interval(metric: stats.Metric) -> stats.Interval:
        return stats.bootstrap_ci(metric, scored.labels, scored.probs, scored.groups, n_boot=n_boot, seed=seed)

    return TestEvidence(
        model=model,
        images=scored.labels.size,
        accuracy=interval(stats.accuracy),
        balanced_accuracy=stats.percentile_interval(scored.balanced_accuracy),
        auc=stats.percentile_interval(scored.auc),
        ece=interval(stats.expected_calibration_error),
        brier=interval(stats.brier_score),
    )


def gather_evidence(
    runs: RunSet, rows: list[BaselineRuns], model: str, reference: str | None, *, n_boot: int = 2000, seed: int = 0
) -> TableEvidence:
    """Return the evidence of each row's `model` (ensemble or best_trial) test predictions; the
    paired tests cover the rows that scored the same images as the row labelled `reference`."""
    found = {r.label: runs.test_predictions(r, model) for r in rows}
    frames = {label: frame for label, frame in found.items() if frame is not None and not frame.empty}
    aligned = (
        {label: _aligned(frame, frames[reference]) for label, frame in frames.items()} if reference in frames else {}
    )
    same = {label: frame for label, frame in aligned.items() if frame is not None}
    scored = {label: _scored(same.get(label, frame), n_boot, seed) for label, frame in frames.items()}
    intervals = {label: _intervals(s, model, n_boot, seed) for label, s in scored.items()}
    if not same:
        return TableEvidence(None, intervals, {}, [])
    assert reference is not None  # rows are aligned only to a reference's frame
    tests = _column_tests({label: scored[label] for label in same}, reference, intervals)
    return TableEvidence(reference, intervals, tests, [label for label in frames if label not in same])


def format_p(p: float | None) -> str:
    """Return a p-value as a table shows it ('-' when untested)."""
    if p is None or math.isnan(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
