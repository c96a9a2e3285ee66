"""Intervals and paired tests for the leaderboard (BASELINES.md §4.4, issue 7).

Published tables give point estimates on a few patients; these functions say how far those
estimates can be trusted and whether two models differ on the same test set. Images of one patient
are correlated, so every bootstrap here resamples whole patients when patient ids are given.

Labels are class indices 0..K-1 and probabilities are rows over those classes, as everywhere in the
harness (BASELINES.md §4.2); in binary tasks class 1 is the positive class.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy import stats
from sklearn.exceptions import UndefinedMetricWarning

from . import weighted

Metric = Callable[[np.ndarray, np.ndarray], float]
# What one resample draws: image indices, or a tuple or list of them for several test sets.
_Draw = TypeVar("_Draw")

# The usual rule for McNemar's test: with fewer discordant pairs the chi-square approximation is poor.
EXACT_MCNEMAR_BELOW = 25


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval; `method` is written for a table footnote."""

    estimate: float
    low: float
    high: float
    method: str


@dataclass(frozen=True)
class PairedTest:
    """A test of model A against model B on the same test images.

    `estimate_a` and `estimate_b` are what the test compares (accuracies for McNemar, AUCs
    otherwise); `se` is the standard error of their difference where the test has one; `b` and `c`
    are McNemar's discordant counts: images A got right and B wrong, and the reverse.
    """

    statistic: float
    p_value: float
    method: str
    estimate_a: float
    estimate_b: float
    se: float | None = None
    b: int | None = None
    c: int | None = None


def _resampler(n: int, groups: np.ndarray | None) -> tuple[str, Callable[[np.random.Generator], np.ndarray]]:
    """Return a description of the resampled units and a function drawing one resample's indices.

    Patients are drawn as `rng.integers(0, P, P)` over the P sorted distinct ids and contribute all
    their images, in their original order; without groups, images are drawn the same way.
    """
    if groups is None:
        return f"{n} images", lambda rng: rng.integers(0, n, n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups has shape {groups.shape}, expected one patient id per image ({n},)")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    patients = len(members)
    return f"{patients} patients", lambda rng: np.concatenate([members[p] for p in rng.integers(0, patients, patients)])


def _replicates(
    statistic: Callable[[_Draw], float],
    draw: Callable[[np.random.Generator], _Draw],
    n_boot: int,
    seed: int,
) -> tuple[np.ndarray, int]:
    """Return the statistic over the resamples where it is defined, and how many were skipped."""
    values = _every_replicate(statistic, draw, n_boot, seed)
    finite = values[np.isfinite(values)]
    return finite, n_boot - finite.size


def _every_replicate(
    statistic: Callable[[_Draw], float],
    draw: Callable[[np.random.Generator], _Draw],
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Return the statistic on each of `n_boot` resamples, NaN where it is undefined."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        # A resample without one class makes AUC undefined; those are counted, not warned about.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        values = np.array([float(statistic(draw(rng))) for _ in range(n_boot)])
    values[~np.isfinite(values)] = math.nan
    return values


@dataclass(frozen=True)
class Replicates:
    """A metric on each resample of one model's test predictions (NaN where it is undefined).

    The resamples depend only on the number of images, the patient groups and the seed, so two
    models' replicates on the same test images pair up resample by resample.
    """

    estimate: float
    values: np.ndarray
    unit: str
    n_boot: int
    seed: int


def bootstrap_replicates(
    metric: Metric,
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> Replicates:
    """Return `metric(labels, probs)` and its value on each of `n_boot` resamples, drawn as in
    `bootstrap_ci` (whole patients when `groups` is given)."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    n = _same_length(labels=labels, probs=probs)
    unit, draw = _resampler(n, groups)
    counted = COUNTED.get(metric)
    if counted is None:
        values = _every_replicate(lambda idx: metric(labels[idx], probs[idx]), draw, n_boot, seed)
    else:
        on_counts = counted(labels, probs)
        values = _every_replicate(lambda idx: on_counts(np.bincount(idx, minlength=n)), draw, n_boot, seed)
    return Replicates(float(metric(labels, probs)), values, unit, n_boot, seed)


def paired_bootstrap_test(a: Replicates, b: Replicates, what: str) -> PairedTest:
    """Return the paired bootstrap test of A's metric against B's from their paired replicates:
    z = (A - B) / SD of the resampled differences, two-sided normal p, as pROC's bootstrap test
    does; resamples where either is undefined are skipped and counted in `method`."""
    if (a.values.shape, a.unit, a.seed) != (b.values.shape, b.unit, b.seed):
        raise ValueError(
            f"replicates do not pair up: {a.values.size} resamples of {a.unit} (seed {a.seed}) and "
            f"{b.values.size} of {b.unit} (seed {b.seed})"
        )
    differences = a.values - b.values
    differences = differences[np.isfinite(differences)]
    se = float(np.std(differences, ddof=1)) if differences.size > 1 else math.nan
    z, p = _z_test(a.estimate - b.estimate, se)
    note = _resamples_note(a.n_boot, a.seed, a.n_boot - differences.size)
    return PairedTest(z, p, f"paired bootstrap test of {what} over {a.unit} ({note})", a.estimate, b.estimate, se=se)


def _resamples_note(n_boot: int, seed: int, skipped: int) -> str:
    note = f"{n_boot} resamples, seed {seed}"
    return note + (f"; {skipped} skipped where the metric is undefined" if skipped else "")


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs differ in length: {lengths}")
    return next(iter(lengths.values()))


def bootstrap_ci(
    metric: Metric,
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Return `metric(labels, probs)` with a percentile bootstrap confidence interval.

    With `groups` (a patient id per image) whole patients are resampled with replacement (cluster
    bootstrap), else single images. A resample where the metric is NaN (scikit-learn's AUC with one
    class) is skipped and the number skipped is stated in `method`; when every resample is skipped
    the bounds are NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    return percentile_interval(bootstrap_replicates(metric, labels, probs, groups, n_boot=n_boot, seed=seed), level)


def _percentile_bounds(values: np.ndarray, level: float) -> tuple[float, float]:
    """Return the central `level` percentile bounds of `values`, NaN when there are none."""
    tail = 50 * (1 - level)
    low, high = np.percentile(values, [tail, 100 - tail]) if values.size else (math.nan, math.nan)
    return float(low), float(high)


def percentile_interval(replicates: Replicates, level: float = 0.95) -> Interval:
    """Return the estimate with the percentile interval of its replicates (those where it is defined)."""
    values = replicates.values[np.isfinite(replicates.values)]
    low, high = _percentile_bounds(values, level)
    note = _resamples_note(replicates.n_boot, replicates.seed, replicates.n_boot - values.size)
    return Interval(
        replicates.estimate, low, high, f"{100 * level:g}% percentile bootstrap over {replicates.unit} ({note})"
    )


def bootstrap_difference(
    metric: Metric,
    sample_a: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    sample_b: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Return metric(A) - metric(B) for two independent test sets, each a (labels, probs, groups)
    triple, with a percentile interval from resampling each set on its own (whole patients where
    groups are given) with one generator, A then B in every replicate."""
    (labels_a, probs_a, groups_a), (labels_b, probs_b, groups_b) = sample_a, sample_b
    labels_a, probs_a, labels_b, probs_b = map(np.asarray, (labels_a, probs_a, labels_b, probs_b))
    unit_a, draw_a = _resampler(_same_length(labels=labels_a, probs=probs_a), groups_a)
    unit_b, draw_b = _resampler(_same_length(labels=labels_b, probs=probs_b), groups_b)
    estimate = float(metric(labels_a, probs_a) - metric(labels_b, probs_b))

    def replicate(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return draw_a(rng), draw_b(rng)

    values, skipped = _replicates(
        lambda idx: metric(labels_a[idx[0]], probs_a[idx[0]]) - metric(labels_b[idx[1]], probs_b[idx[1]]),
        replicate,
        n_boot,
        seed,
    )
    low, high = _percentile_bounds(values, level)
    method = (
        f"{100 * level:g}% percentile bootstrap of the difference, {unit_a} and {unit_b} resampled "
        f"independently ({_resamples_note(n_boot, seed, skipped)})"
    )
    return Interval(estimate, low, high, method)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedTest:
    """Return McNemar's test of two models' accuracies from per-image correctness (True = right).

    Exact two-sided binomial test on the discordant pairs when there are fewer than 25 of them
    (`statistic` is then min(b, c), as statsmodels reports it), else the chi-square statistic with
    continuity correction, (|b - c| - 1)² / (b + c), on one degree of freedom. With no discordant
    pair p = 1.
    """
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.ndim != 1 or a.shape != b_.shape:
        raise ValueError(f"correct_a and correct_b must be 1-D of equal length, got {a.shape} and {b_.shape}")
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    discordant = b + c
    if discordant == 0:
        statistic, p, method = 0.0, 1.0, "exact McNemar test (no discordant pairs)"
    elif discordant < EXACT_MCNEMAR_BELOW:
        statistic = float(min(b, c))
        p = stats.binomtest(b, discordant, 0.5).pvalue
        method = f"exact McNemar test (two-sided binomial, {discordant} discordant pairs)"
    else:
        statistic = (abs(b - c) - 1) ** 2 / discordant
        p = stats.chi2.sf(statistic, 1)
        method = f"McNemar chi-square test with continuity correction ({discordant} discordant pairs)"
    return PairedTest(float(statistic), float(p), method, float(a.mean()), float(b_.mean()), b=b, c=c)


def _z_test(difference: float, se: float) -> tuple[float, float]:
    """Return z and its two-sided normal p-value; NaN when the SE could not be estimated."""
    if math.isnan(se):
        return math.nan, math.nan
    if se > 0:
        z = difference / se
    elif difference == 0:
        z = 0.0  # the same ranking twice: nothing to test
    else:
        z = math.copysign(math.inf, difference)  # a difference with no variance left at all
    return z, float(2 * stats.norm.sf(abs(z)))


def _positive_scores(scores: np.ndarray, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] == 2:
        return scores[:, 1]
    if scores.ndim != 1:
        raise ValueError(
            f"{name} has shape {scores.shape}: DeLong's test takes one score per image or a two-column "
            "probability matrix; use paired_bootstrap_auc for more classes"
        )
    return scores


def delong(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> PairedTest:
    """Return DeLong's test of two correlated ROC AUCs on the same binary test set.

    `labels` are 0/1 (1 positive); scores are one per image, or (n, 2) probability matrices whose
    class-1 column is used. `statistic` is z = (AUC_A − AUC_B) / SE and the p-value is two-sided.
    Uses the midrank algorithm of Sun & Xu (IEEE SPL 21(11), 2014), O(n log n).
    """
    labels = np.asarray(labels)
    a, b = _positive_scores(scores_a, "scores_a"), _positive_scores(scores_b, "scores_b")
    _same_length(labels=labels, scores_a=a, scores_b=b)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"DeLong's test needs 0/1 labels, got values {np.unique(labels).tolist()}")
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least 2 images of each class, got {m} positive and {n} negative")
    scores = np.stack([a, b])
    x, y = scores[:, positive], scores[:, ~positive]
    tx, ty = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    tz = stats.rankdata(np.concatenate([x, y], axis=1), axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # per positive image: the share of negatives it outranks
    v01 = 1 - (tz[:, m:] - ty) / m  # per negative image: the share of positives that outrank it
    # The variance of the difference taken directly, so that identical inputs give exactly 0.
    se = math.sqrt(np.var(v10[0] - v10[1], ddof=1) / m + np.var(v01[0] - v01[1], ddof=1) / n)
    z, p = _z_test(float(auc[0] - auc[1]), se)
    return PairedTest(z, p, "DeLong test of paired AUCs", float(auc[0]), float(auc[1]), se=se)


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC from midranks (equal to scikit-learn's ROC AUC); NaN with one class."""
    m = int(positive.sum())
    n = positive.size - m
    if m == 0 or n == 0:
        return math.nan
    return float((stats.rankdata(score)[positive].sum() - m * (m + 1) / 2) / (m * n))


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Return the share of images whose most probable class is their label."""
    return float((np.asarray(probs).argmax(1) == labels).mean())


def balanced_accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Return the mean over the classes present of the share of their images predicted as them
    (scikit-learn's balanced_accuracy_score, the macro accuracy eva reports)."""
    labels, predicted = np.asarray(labels), np.asarray(probs).argmax(1)
    return float(np.mean([(predicted[labels == k] == k).mean() for k in np.unique(labels)]))


def auc(labels: np.ndarray, probs: np.ndarray, average: str = "macro") -> float:
    """Return the ROC AUC as in BASELINES.md §4.2 (class 1 in binary tasks, one-vs-rest over K > 2
    classes, averaged unweighted or `weighted` by prevalence), from midranks: equal to scikit-learn's
    and several times faster, which matters inside a bootstrap."""
    if probs.ndim == 1:
        return _binary_auc(labels == 1, probs)
    if probs.shape[1] == 2:
        return _binary_auc(labels == 1, probs[:, 1])
    per_class = np.array([_binary_auc(labels == k, probs[:, k]) for k in range(probs.shape[1])])
    weights = np.bincount(labels, minlength=probs.shape[1]) if average == "weighted" else None
    return float(np.average(per_class, weights=weights))


def paired_bootstrap_auc(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    average: str = "macro",
) -> PairedTest:
    """Return a paired bootstrap test of two models' AUCs on the same test images.

    Both models are scored on every resample (whole patients when `groups` is given), and
    z = (AUC_A − AUC_B) / SD of the resampled differences is referred to the normal distribution,
    as pROC's bootstrap test does. AUC is that of class 1 for 1-D scores or two columns, else the
    one-vs-rest AUC over the K columns averaged with `average` ("macro", or "weighted" by class
    prevalence). Resamples missing a class are skipped and counted in `method`.
    """
    if average not in ("macro", "weighted"):
        raise ValueError(f"average must be 'macro' or 'weighted', got {average!r}")
    labels = np.asarray(labels)
    a, b = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2):
        raise ValueError(f"probs_a and probs_b must have the same 1-D or 2-D shape, got {a.shape} and {b.shape}")
    _same_length(labels=labels, probs_a=a, probs_b=b)
    classes = 2 if a.ndim == 1 else a.shape[1]
    if not np.isin(labels, np.arange(classes)).all():
        raise ValueError(f"labels must be class indices 0..{classes - 1}, got values {np.unique(labels).tolist()}")
    labels = labels.astype(np.int64)

    def metric(y: np.ndarray, p: np.ndarray) -> float:
        return auc(y, p, average)

    replicates_a, replicates_b = (
        bootstrap_replicates(metric, labels, probs, groups, n_boot=n_boot, seed=seed) for probs in (a, b)
    )
    return paired_bootstrap_test(replicates_a, replicates_b, "AUCs" if classes == 2 else f"{average} one-vs-rest AUCs")


def mean_sd_se(values: np.ndarray) -> tuple[float, float, float]:
    """Return the mean, the sample SD (ddof=1) and the standard error SD/√n of per-fold values.

    Tables show SD and SE side by side because 001's "±" behaves like an SE (BASELINES.md §3.1).
    With one value SD and SE are NaN: one fold says nothing about spread.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"mean_sd_se needs a non-empty 1-D sequence, got shape {v.shape}")
    if v.size == 1:
        return float(v[0]), math.nan, math.nan
    sd = float(v.std(ddof=1))
    return float(v.mean()), sd, sd / math.sqrt(v.size)


def _probability_matrix(probs: np.ndarray) -> np.ndarray:
    """Return N x K probabilities; a 1-D array is read as class 1's probability of a binary task."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.stack([1 - probs, probs], axis=1) if probs.ndim == 1 else probs


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Return the expected calibration error of the top-class confidence (Guo et al., ICML 2017).

    Each image's confidence is its highest class probability (in a binary task: the probability of
    the predicted class); images fall into `bins` equal-width bins (lo, hi] over [0, 1], the first
    also taking 0. ECE = sum over bins of (images in bin / N) * |accuracy - mean confidence| there.
    """
    probs = _probability_matrix(probs)
    labels = np.asarray(labels)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    which = np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True)
    counts = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, correct, minlength=bins) - np.bincount(which, confidence, minlength=bins))
    # Summing |sum(correct) - sum(confidence)| per bin over N is the weighted mean of the per-bin gaps.
    return float(gap[counts > 0].sum() / labels.size)


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Return the Brier score as scikit-learn's `brier_score_loss` defines it.

    Over K > 2 classes: the mean over images of sum_k (p_k - [label = k])², in [0, 2] (Brier's
    original score). In a binary task: the mean of (p_1 - label)², half that sum, in [0, 1].
    """
    probs = _probability_matrix(probs)
    labels = np.asarray(labels)
    onehot = np.eye(probs.shape[1])[labels]
    total = float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))
    return total / 2 if probs.shape[1] == 2 else total


# The metrics a bootstrap evaluates on each resample's row counts (weighted.py says why).
COUNTED: dict[Metric, Callable[[np.ndarray, np.ndarray], weighted.Counted]] = {
    accuracy: weighted.accuracy,
    balanced_accuracy: weighted.balanced_accuracy,
    auc: weighted.auc,
    expected_calibration_error: weighted.expected_calibration_error,
    brier_score: weighted.brier_score,
}


def holm(p_values: np.ndarray) -> np.ndarray:
    """Return Holm's step-down adjusted p-values of one family of tests (what statsmodels'
    multipletests(method="holm") returns, without the full garbage collection it runs on every
    call: 0.3 s a call in `harness leaderboard`, over a second in a test process, per column).

    A NaN p (a test that could not be computed) stays NaN and is no member of the family.
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    # The i-th smallest of m p-values times m - i (i from 0), kept non-decreasing, at most 1.
    stepped = np.maximum.accumulate(p[order] * np.arange(len(order), 0, -1))
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def compact_letters(names: list[str], different: list[tuple[str, str]]) -> dict[str, str]:
    """Return a compact letter display: letters per name such that two names share a letter exactly
    when their pair is not in `different`.

    Piepho's insert-and-absorb algorithm (J. Comput. Graph. Stat. 13(2), 2004): start with one
    letter held by every name; for each different pair, split every letter holding both into one
    without the first and one without the second, then drop letters whose holders are a subset of
    another letter's. Letters are named in the order of `names` (list the best first, and 'a' marks
    the group of the best).
    """
    unknown = {n for pair in different for n in pair} - set(names)
    if unknown:
        raise ValueError(f"pairs name models not in the list: {sorted(unknown)}")
    groups: list[frozenset[str]] = [frozenset(names)]
    for i, j in different:
        split = []
        for group in groups:
            split += [group - {i}, group - {j}] if i in group and j in group else [group]
        groups = [
            g
            for k, g in enumerate(split)
            if not any(g < h or (g == h and m < k) for m, h in enumerate(split) if m != k)
        ]
    position = {n: k for k, n in enumerate(names)}
    groups.sort(key=lambda g: sorted(position[n] for n in g))
    if len(groups) > len(LETTERS):
        raise ValueError(f"{len(groups)} groups need more than {len(LETTERS)} letters")
    return {n: "".join(LETTERS[k] for k, g in enumerate(groups) if n in g) for n in names}


def different_pairs(pairs: list[tuple[str, str]], p_values: np.ndarray, alpha: float = 0.05) -> list[tuple[str, str]]:
    """Return the pairs whose Holm-adjusted p, over the family of all `pairs`, is below `alpha`;
    a pair without a p (NaN) counts as not distinguishable."""
    adjusted = holm(p_values)
    return [pair for pair, p in zip(pairs, adjusted) if p < alpha]


# One model's test predictions: labels, probabilities, and patient ids (None: images resampled).
Sample = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


def fold_paired_difference(
    metric: Metric, folds: list[tuple[Sample, Sample]], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[list[float], Interval]:
    """Return the per-fold differences metric(A_f) - metric(B_f) and their mean over folds with a
    percentile interval. Each replicate resamples patients (images without groups) within both
    test sets of every fold, recomputes the per-fold differences and averages them."""
    drawers = [tuple(_resampler(len(labels), groups) for labels, _, groups in pair) for pair in folds]

    def difference(pair: tuple[Sample, Sample], idx: tuple[np.ndarray, np.ndarray]) -> float:
        (labels_a, probs_a, _), (labels_b, probs_b, _) = pair
        return metric(labels_a[idx[0]], probs_a[idx[0]]) - metric(labels_b[idx[1]], probs_b[idx[1]])

    whole = [(np.arange(len(a[0])), np.arange(len(b[0]))) for a, b in folds]
    per_fold = [float(difference(pair, idx)) for pair, idx in zip(folds, whole)]
    values, skipped = _replicates(
        lambda draws: float(np.mean([difference(pair, idx) for pair, idx in zip(folds, draws)])),
        lambda rng: [(draw_a(rng), draw_b(rng)) for (_, draw_a), (_, draw_b) in drawers],
        n_boot,
        seed,
    )
    low, high = _percentile_bounds(values, level)
    units = "; ".join(f"{unit_a} / {unit_b}" for (unit_a, _), (unit_b, _) in drawers)
    method = (
        f"{100 * level:g}% percentile bootstrap of the mean per-fold difference, both test sets of each fold "
        f"resampled by patient ({units}; {_resamples_note(n_boot, seed, skipped)})"
    )
    return per_fold, Interval(float(np.mean(per_fold)), low, high, method)
