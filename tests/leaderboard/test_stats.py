"""Intervals and paired tests of harness.leaderboard.stats, checked against direct computations and SciPy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import special, stats
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from harness.leaderboard import stats as lb_stats
from harness.leaderboard.stats import (
    bootstrap_ci,
    brier_score,
    compact_letters,
    delong,
    different_pairs,
    expected_calibration_error,
    holm,
    mcnemar,
    mean_sd_se,
    paired_bootstrap_auc,
)


def rank_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUC of class 1 from ranks: fast enough to bootstrap in a test; NaN with one class."""
    positive = labels == 1
    m, n = positive.sum(), (~positive).sum()
    if m == 0 or n == 0:
        return math.nan
    return float((stats.rankdata(probs)[positive].sum() - m * (m + 1) / 2) / (m * n))


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean((probs >= 0.5) == labels))


def patient_data(seed: int = 0, patients: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, class-1 probabilities and patient ids where a patient's images share its label."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 16, patients)
    groups = np.repeat([f"p{i:02d}" for i in range(patients)], sizes)
    labels = np.repeat(rng.integers(0, 2, patients), sizes)
    probs = 1 / (1 + np.exp(-(2 * labels - 1 + rng.normal(0, 1.2, labels.size))))
    # Shuffled so that a patient's images are not contiguous, as in a real manifest.
    order = rng.permutation(labels.size)
    return labels[order], probs[order], groups[order]


def direct_percentile_interval(labels, probs, groups, n_boot, seed) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    members = None if groups is None else [np.flatnonzero(groups == g) for g in np.unique(groups)]

    def draw() -> np.ndarray:
        if members is None:
            return rng.integers(0, labels.size, labels.size)
        return np.concatenate([members[p] for p in rng.integers(0, len(members), len(members))])

    values = [rank_auc(labels[idx], probs[idx]) for idx in (draw() for _ in range(n_boot))]
    values = [v for v in values if not math.isnan(v)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


@pytest.mark.parametrize("by_patient", [True, False])
def test_bootstrap_ci_equals_a_direct_resampling_with_the_same_seed(by_patient: bool) -> None:
    labels, probs, groups = patient_data()
    groups = groups if by_patient else None
    interval = bootstrap_ci(rank_auc, labels, probs, groups, n_boot=400, seed=7)
    low, high = direct_percentile_interval(labels, probs, groups, n_boot=400, seed=7)
    assert interval.estimate == rank_auc(labels, probs)
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-12)
    unit = "20 patients" if by_patient else f"{labels.size} images"
    assert interval.method == f"95% percentile bootstrap over {unit} (400 resamples, seed 7)"


def test_bootstrap_ci_contains_the_estimate() -> None:
    labels, probs, groups = patient_data(seed=1)
    interval = bootstrap_ci(rank_auc, labels, probs, groups, n_boot=400)
    assert interval.low < interval.estimate < interval.high


def test_patient_resampling_is_wider_than_image_resampling_when_patients_are_correlated() -> None:
    # Each patient's 20 images are all right or all wrong: 30 patients carry the information of 30
    # images, not 600, so the patient-level interval must be several times wider.
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(30), 20)
    labels = rng.integers(0, 2, groups.size)
    right = np.repeat(rng.random(30) < 0.7, 20)
    probs = np.where(right, labels, 1 - labels).astype(float)
    by_patient = bootstrap_ci(accuracy, labels, probs, groups, n_boot=1000)
    by_image = bootstrap_ci(accuracy, labels, probs, n_boot=1000)
    assert by_patient.estimate == by_image.estimate
    assert by_patient.high - by_patient.low > 2 * (by_image.high - by_image.low)


def test_constant_metric_gives_a_zero_width_interval() -> None:
    labels, probs, groups = patient_data()
    interval = bootstrap_ci(lambda y, p: 0.5, labels, probs, groups, n_boot=200)
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.5, 0.5)


def test_resamples_without_both_classes_are_skipped_and_counted() -> None:
    # One positive patient and two negative ones: a resample misses a class with probability
    # (2/3)³ + (1/3)³, and scikit-learn's AUC is then NaN with a warning that must not escape.
    groups = np.repeat(["pos", "neg1", "neg2"], 4)
    labels = np.repeat([1, 0, 0], 4)
    probs = np.linspace(0.1, 0.9, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interval = bootstrap_ci(roc_auc_score, labels, probs, groups, n_boot=100, seed=3)
    rng = np.random.default_rng(3)
    # np.unique sorts the ids to neg1, neg2, pos: index 2 is the positive patient.
    skipped = sum(len(set(rng.integers(0, 3, 3) == 2)) == 1 for _ in range(100))
    assert 0 < skipped < 100
    assert interval.method == (
        f"95% percentile bootstrap over 3 patients (100 resamples, seed 3; "
        f"{skipped} skipped where the metric is undefined)"
    )


def paired(both: int, b: int, c: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of A and B with the given concordant and discordant counts."""
    a = np.array([True] * both + [True] * b + [False] * c + [False] * neither)
    other = np.array([True] * both + [False] * b + [True] * c + [False] * neither)
    return a, other


def test_mcnemar_exact_branch_is_the_binomial_test() -> None:
    test = mcnemar(*paired(50, 7, 2, 5))
    assert (test.b, test.c) == (7, 2)
    assert test.p_value == pytest.approx(stats.binomtest(7, 9, 0.5).pvalue)
    assert test.p_value == pytest.approx(2 * (1 + 9 + 36) / 2**9)  # 2·P(X ≤ 2), X ~ Bin(9, ½)
    assert test.statistic == 2
    assert (test.estimate_a, test.estimate_b) == pytest.approx((57 / 64, 52 / 64))
    assert test.method.startswith("exact McNemar")


def test_mcnemar_chi_square_branch_has_continuity_correction() -> None:
    test = mcnemar(*paired(100, 30, 12, 8))
    assert test.statistic == pytest.approx((18 - 1) ** 2 / 42)
    assert test.p_value == pytest.approx(stats.chi2.sf(289 / 42, 1))
    assert test.method.startswith("McNemar chi-square test with continuity correction")


def test_mcnemar_switches_to_chi_square_at_25_discordant_pairs() -> None:
    assert mcnemar(*paired(10, 16, 8, 0)).p_value == pytest.approx(stats.binomtest(16, 24, 0.5).pvalue)
    assert mcnemar(*paired(10, 17, 8, 0)).p_value == pytest.approx(stats.chi2.sf(8**2 / 25, 1))


def test_mcnemar_without_discordant_pairs_has_p_one() -> None:
    test = mcnemar(*paired(40, 0, 0, 3))
    assert (test.statistic, test.p_value, test.b, test.c) == (0.0, 1.0, 0, 0)


@pytest.mark.parametrize("counts", [(50, 7, 2, 5), (100, 30, 12, 8), (20, 3, 3, 1)])
def test_mcnemar_agrees_with_statsmodels(counts: tuple[int, int, int, int]) -> None:
    both, b, c, neither = counts
    ours = mcnemar(*paired(*counts))
    theirs = sm_mcnemar([[both, b], [c, neither]], exact=b + c < 25, correction=True)
    assert ours.statistic == pytest.approx(theirs.statistic)
    assert ours.p_value == pytest.approx(theirs.pvalue)


def correlated_scores(n: int, seed: int, gap: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary labels and two models' scores sharing a latent signal; A is `gap` better separated."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    shared = labels + rng.normal(0, 1, n)
    a = shared + gap * labels + rng.normal(0, 0.7, n)
    b = shared + rng.normal(0, 0.7, n)
    return labels, a, b


def test_delong_compares_scikit_learn_aucs_with_ties() -> None:
    labels, a, b = correlated_scores(150, seed=4)
    a, b = np.round(a, 1), np.round(b, 1)  # ties exercise the midranks
    test = delong(labels, a, b)
    assert test.estimate_a == pytest.approx(roc_auc_score(labels, a), abs=1e-12)
    assert test.estimate_b == pytest.approx(roc_auc_score(labels, b), abs=1e-12)
    probs = np.stack([1 - a, a], axis=1)
    assert delong(labels, probs, b).statistic == pytest.approx(test.statistic)


def test_delong_equals_the_pairwise_definition() -> None:
    # DeLong, DeLong & Clarke-Pearson (1988) written with all m·n comparisons.
    labels, a, b = correlated_scores(80, seed=5, gap=0.3)
    a, b = np.round(a, 1), np.round(b, 1)
    pos, neg = labels == 1, labels == 0
    m, n = pos.sum(), neg.sum()
    psi = [(s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :]) for s in (a, b)]
    v10 = np.stack([p.mean(axis=1) for p in psi])
    v01 = np.stack([p.mean(axis=0) for p in psi])
    s10, s01 = np.cov(v10), np.cov(v01)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (psi[0].mean() - psi[1].mean()) / math.sqrt(var)
    test = delong(labels, a, b)
    assert test.statistic == pytest.approx(z, rel=1e-9)
    assert test.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert test.method == "DeLong test of paired AUCs"


def test_delong_of_identical_scores_is_z_zero_p_one() -> None:
    labels, a, _ = correlated_scores(100, seed=6)
    test = delong(labels, a, a.copy())
    assert (test.statistic, test.p_value, test.se) == (0.0, 1.0, 0.0)


def test_delong_finds_a_clearly_better_model() -> None:
    labels, a, b = correlated_scores(200, seed=7, gap=1.5)
    test = delong(labels, a, b)
    assert test.estimate_a > test.estimate_b
    assert test.statistic > 0
    assert test.p_value < 0.01


def test_delong_se_agrees_with_a_paired_bootstrap() -> None:
    labels, a, b = correlated_scores(400, seed=8, gap=0.3)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, labels.size, (2000, labels.size))
    y = labels[idx]
    m = y.sum(axis=1)

    def aucs(scores: np.ndarray) -> np.ndarray:
        ranks = stats.rankdata(scores[idx], axis=1)
        return ((ranks * y).sum(axis=1) - m * (m + 1) / 2) / (m * (labels.size - m))

    bootstrap_se = np.std(aucs(a) - aucs(b), ddof=1)
    assert bootstrap_se == pytest.approx(delong(labels, a, b).se, rel=0.2)


def multiclass_data(n: int, seed: int, gap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four-class labels and two softmax matrices; A's logits favour the true class by `gap` more."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    shared = rng.normal(0, 1, (n, 4)) + np.eye(4)[labels]
    logits_a = shared + gap * np.eye(4)[labels] + rng.normal(0, 0.5, (n, 4))
    logits_b = shared + rng.normal(0, 0.5, (n, 4))
    return labels, special.softmax(logits_a, axis=1), special.softmax(logits_b, axis=1)


@pytest.mark.parametrize("average", ["macro", "weighted"])
def test_paired_bootstrap_compares_scikit_learn_one_vs_rest_aucs(average: str) -> None:
    labels, a, b = multiclass_data(200, seed=9, gap=0.5)
    test = paired_bootstrap_auc(labels, a, b, n_boot=50, average=average)
    assert test.estimate_a == pytest.approx(roc_auc_score(labels, a, multi_class="ovr", average=average))
    assert test.estimate_b == pytest.approx(roc_auc_score(labels, b, multi_class="ovr", average=average))
    assert test.method == f"paired bootstrap test of {average} one-vs-rest AUCs over 200 images (50 resamples, seed 0)"


def test_paired_bootstrap_finds_a_clearly_better_multiclass_model() -> None:
    labels, a, b = multiclass_data(300, seed=10, gap=1.5)
    groups = np.arange(300) // 3
    test = paired_bootstrap_auc(labels, a, b, groups, n_boot=300)
    assert test.p_value < 0.01
    assert test.method.startswith("paired bootstrap test of macro one-vs-rest AUCs over 100 patients")


def test_paired_bootstrap_of_identical_probabilities_has_p_one() -> None:
    labels, a, _ = multiclass_data(100, seed=11, gap=0.0)
    test = paired_bootstrap_auc(labels, a, a.copy(), n_boot=100)
    assert (test.statistic, test.p_value) == (0.0, 1.0)


def test_paired_bootstrap_se_agrees_with_delong_on_binary_scores() -> None:
    labels, a, b = correlated_scores(400, seed=12, gap=0.3)
    test = paired_bootstrap_auc(labels, a, b, n_boot=1000)
    assert test.method.startswith("paired bootstrap test of AUCs")
    assert test.se == pytest.approx(delong(labels, a, b).se, rel=0.2)


def test_mean_sd_se_of_four_folds() -> None:
    values = [87, 89, 90, 86]
    mean, sd, se = mean_sd_se(values)
    assert mean == pytest.approx(np.mean(values))
    assert sd == pytest.approx(np.std(values, ddof=1))
    assert se == pytest.approx(np.std(values, ddof=1) / np.sqrt(4))
    assert (mean, sd, se) == pytest.approx((88, math.sqrt(10 / 3), math.sqrt(10 / 3) / 2))  # by hand


def test_mean_sd_se_of_one_fold_has_no_spread() -> None:
    mean, sd, se = mean_sd_se([0.9])
    assert mean == 0.9 and math.isnan(sd) and math.isnan(se)


def test_bootstrap_difference_resamples_each_test_set_by_patient() -> None:
    from harness.leaderboard.stats import bootstrap_difference

    rng = np.random.default_rng(4)
    labels_a, labels_b = rng.integers(0, 2, 30), rng.integers(0, 2, 24)
    probs_a, probs_b = rng.random((30, 2)), rng.random((24, 2))
    groups_a = np.repeat([f"a{i}" for i in range(6)], 5)

    def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
        return float((probs.argmax(1) == labels).mean())

    interval = bootstrap_difference(
        accuracy, (labels_a, probs_a, groups_a), (labels_b, probs_b, None), n_boot=500, seed=9
    )
    draw = np.random.default_rng(9)
    members = [np.flatnonzero(groups_a == g) for g in sorted(set(groups_a))]
    values = []
    for _ in range(500):
        a = np.concatenate([members[p] for p in draw.integers(0, 6, 6)])
        b = draw.integers(0, 24, 24)
        values.append(accuracy(labels_a[a], probs_a[a]) - accuracy(labels_b[b], probs_b[b]))
    assert interval.estimate == pytest.approx(accuracy(labels_a, probs_a) - accuracy(labels_b, probs_b))
    assert (interval.low, interval.high) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    assert "6 patients and 24 images resampled independently" in interval.method


def test_holm_equals_statsmodels_and_leaves_untested_comparisons_out() -> None:
    raw = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    assert holm(raw) == pytest.approx(multipletests(raw, method="holm")[1], rel=1e-12)
    # By hand: sorted 0.005, 0.01, 0.03, 0.04, 0.2 times 5, 4, 3, 2, 1, kept monotone, capped at 1.
    assert holm(raw) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.2])
    with_untested = holm(np.array([0.01, math.nan, 0.04]))
    assert math.isnan(with_untested[1])
    assert with_untested[[0, 2]] == pytest.approx(multipletests([0.01, 0.04], method="holm")[1])
    assert math.isnan(holm(np.array([math.nan]))[0]) and holm(np.array([])).size == 0
    # Ties and the cap at 1, and statsmodels' answer on families drawn with ties among them.
    assert holm(np.array([0.3, 0.6, 0.3])) == pytest.approx([0.9, 0.9, 0.9])
    assert holm(np.array([0.5, 0.6])) == pytest.approx([1.0, 1.0])
    draw = np.random.default_rng(0)
    for size in (1, 2, 7, 30):
        family = draw.choice(draw.uniform(0, 0.5, size), size)
        assert holm(family) == pytest.approx(multipletests(family, method="holm")[1], rel=1e-12)


def direct_ece(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE as Guo et al. write it: bins (lo, hi] over [0, 1], a loop over bins."""
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        inside = (confidence > lo) & (confidence <= hi) if k else (confidence >= lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


CALIBRATION_LABELS = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1])
# Class 1's probabilities, none of whose top-class confidences sits on a bin edge (k/15).
CALIBRATION_P1 = np.array([0.10, 0.95, 0.62, 0.38, 0.30, 0.55, 0.18, 0.82, 0.99, 0.50])


def test_ece_of_a_binary_model_by_hand_and_directly() -> None:
    probs = np.stack([1 - CALIBRATION_P1, CALIBRATION_P1], 1)
    ece = expected_calibration_error(CALIBRATION_LABELS, probs)
    # By hand: confidences (the predicted class's probability; the tie 0.5 predicts class 0, wrong)
    # and right/wrong, per bin (lo, hi] of width 1/15, as |#right - sum of confidences|:
    # 0.50 W: 0.5; 0.55 W: 0.55; 0.62 R, 0.62 R: 0.76; 0.70 W: 0.70; 0.82 R, 0.82 R: 0.36;
    # 0.90 R: 0.10; 0.95 R, 0.99 R: 0.06. Sum 3.03 over 10 images.
    assert ece == pytest.approx(0.303, abs=1e-12)
    assert ece == pytest.approx(direct_ece(CALIBRATION_LABELS, probs), abs=1e-12)
    assert expected_calibration_error(CALIBRATION_LABELS, CALIBRATION_P1) == ece  # 1-D: class 1's probability


def test_ece_of_a_multiclass_model_equals_a_direct_computation() -> None:
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(200, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 200)
    assert expected_calibration_error(labels, probs) == pytest.approx(direct_ece(labels, probs), abs=1e-12)
    perfect = np.eye(4)[labels]
    assert expected_calibration_error(labels, perfect) == 0.0


def test_brier_score_is_scikit_learns_in_both_conventions() -> None:
    probs = np.stack([1 - CALIBRATION_P1, CALIBRATION_P1], 1)
    binary = brier_score(CALIBRATION_LABELS, probs)
    assert binary == pytest.approx(np.mean((CALIBRATION_P1 - CALIBRATION_LABELS) ** 2), abs=1e-15)
    assert binary == pytest.approx(brier_score_loss(CALIBRATION_LABELS, CALIBRATION_P1), abs=1e-15)
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(50, 3))
    multi = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 3, 50)
    direct = np.mean(np.sum((multi - np.eye(3)[labels]) ** 2, axis=1))
    assert brier_score(labels, multi) == pytest.approx(direct, abs=1e-15)
    assert brier_score(labels, multi) == pytest.approx(brier_score_loss(labels, multi, labels=[0, 1, 2]), abs=1e-15)


def test_compact_letters_of_four_models_by_hand() -> None:
    # A-C, A-D and B-D differ; A-B, B-C and C-D do not: three overlapping groups {A,B}, {B,C}, {C,D}.
    letters = compact_letters(["A", "B", "C", "D"], [("A", "C"), ("A", "D"), ("B", "D")])
    assert letters == {"A": "a", "B": "ab", "C": "bc", "D": "c"}
    # Nothing differs: one group. Everything differs: a letter each.
    assert compact_letters(["A", "B", "C"], []) == {"A": "a", "B": "a", "C": "a"}
    everything = [("A", "B"), ("A", "C"), ("B", "C")]
    assert compact_letters(["A", "B", "C"], everything) == {"A": "a", "B": "b", "C": "c"}
    # The first listed (the best) gets 'a' whatever the pairs' order.
    assert compact_letters(["C", "B", "A"], [("A", "C"), ("B", "C")]) == {"C": "a", "B": "b", "A": "b"}


def test_compact_letters_absorb_redundant_letters() -> None:
    # Splitting A-C after A-B leaves {C,D,E} inside {B,C,D,E}: absorbed, it would be a redundant letter.
    letters = compact_letters(["A", "B", "C", "D", "E"], [("A", "B"), ("A", "C"), ("D", "E")])
    # Groups: {A,D}, {A,E}, {B,C,D}, {B,C,E}: every non-differing pair shares exactly one letter.
    assert letters == {"A": "ab", "B": "cd", "C": "cd", "D": "ac", "E": "bd"}


@pytest.mark.parametrize("seed", range(20))
def test_compact_letters_share_a_letter_exactly_when_not_different(seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = [f"m{i}" for i in range(int(rng.integers(2, 8)))]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    different = [pair for pair in pairs if rng.random() < 0.5]
    letters = compact_letters(names, different)
    for a, b in pairs:
        assert (not set(letters[a]) & set(letters[b])) == ((a, b) in different), (a, b, letters)
    groups = [frozenset(n for n in names if ch in letters[n]) for ch in sorted(set("".join(letters.values())))]
    assert not any(g < h for g in groups for h in groups)  # absorbed: no letter's group inside another's


def test_different_pairs_are_those_below_alpha_after_holm() -> None:
    pairs = [("A", "B"), ("A", "C"), ("B", "C")]
    raw = np.array([0.01, 0.03, math.nan])
    # Holm over the two tested pairs: 0.02 and 0.03, both below 0.05; the untested pair is not different.
    assert different_pairs(pairs, raw) == [("A", "B"), ("A", "C")]
    assert different_pairs(pairs, np.array([0.01, 0.03, 0.04])) == [("A", "B")]  # 0.03, 0.06, 0.06


def test_replicates_pair_up_only_on_the_same_resamples() -> None:
    from harness.leaderboard.stats import bootstrap_replicates, paired_bootstrap_test, percentile_interval

    labels, probs, groups = patient_data(seed=5)
    a = bootstrap_replicates(rank_auc, labels, probs, groups, n_boot=200, seed=1)
    b = bootstrap_replicates(rank_auc, labels, probs**2, groups, n_boot=200, seed=1)
    # The interval of the replicates is bootstrap_ci's; the test of a monotone transform is no difference.
    assert percentile_interval(a) == bootstrap_ci(rank_auc, labels, probs, groups, n_boot=200, seed=1)
    assert paired_bootstrap_test(a, b, "AUCs").p_value == 1.0
    with pytest.raises(ValueError, match="do not pair up"):
        paired_bootstrap_test(a, bootstrap_replicates(rank_auc, labels, probs, groups, n_boot=200, seed=2), "AUCs")


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("metric", list(lb_stats.COUNTED), ids=lambda m: m.__name__)
def test_metrics_on_resample_counts_equal_them_on_the_gathered_rows(metric, classes: int) -> None:
    assert set(lb_stats.COUNTED) == {
        lb_stats.accuracy,
        lb_stats.balanced_accuracy,
        lb_stats.auc,
        lb_stats.expected_calibration_error,
        lb_stats.brier_score,
    }
    # Probabilities rounded to two decimals, so scores tie; patients drawn whole, so rows repeat.
    rng = np.random.default_rng(classes)
    labels = rng.integers(0, classes, 600)
    probs = np.round(rng.dirichlet(np.ones(classes), 600), 2)
    probs /= probs.sum(1, keepdims=True)
    groups = rng.integers(0, 30, 600).astype(str)
    counted = lb_stats.bootstrap_replicates(metric, labels, probs, groups, n_boot=200, seed=4)
    gathered = lb_stats.bootstrap_replicates(lambda y, p: metric(y, p), labels, probs, groups, n_boot=200, seed=4)
    np.testing.assert_allclose(counted.values, gathered.values, rtol=0, atol=1e-12)
    assert counted.estimate == gathered.estimate


def test_balanced_accuracy_is_scikit_learns_over_the_classes_present() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 300)
    probs = rng.dirichlet(np.ones(4), 300)
    assert lb_stats.balanced_accuracy(labels, probs) == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))
    # A class without images is no term of the mean (scikit-learn warns and does the same).
    absent = labels != 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = balanced_accuracy_score(labels[absent], probs[absent].argmax(1))
    assert lb_stats.balanced_accuracy(labels[absent], probs[absent]) == pytest.approx(expected)
