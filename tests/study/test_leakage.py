"""The leakage study: patch-random folds that really mix patients, patient folds that never do, every
fold held out once in each arm, and an inflation that is the mean of the per-fold differences the
arms logged in MLflow."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness import tracking
from harness.cli import app
from harness.data.splits import CV, TEST, held_out_fold, patch_random_split, patient_split, shared_patients
from harness.leaderboard.stats import fold_paired_difference
from tests.conftest import experiment_dict, write_experiment


def _manifest() -> pd.DataFrame:
    patients = np.repeat([f"p{i:02d}" for i in range(20)], 10)
    return pd.DataFrame(
        {
            "rel_path": [f"{i}.png" for i in range(200)],
            "patient_id": patients,
            "label": np.random.default_rng(0).integers(0, 2, 200),
        }
    )


def test_patch_random_split_shares_patients_and_the_patient_split_never_does() -> None:
    manifest = _manifest()
    leaky = patch_random_split(manifest, folds=4, test_fraction=0.2, seed=0)
    clean = patient_split(manifest, folds=4, test_fraction=0.2, seed=0)
    for split in (leaky, clean):
        assert len(split.rows(split=TEST)) == pytest.approx(40, abs=2)
        assert sorted(set(split.assignments.fold[split.assignments.split == CV])) == [0, 1, 2, 3]
    assert all(shared_patients(manifest, leaky, k) >= 5 for k in range(4))
    assert all(shared_patients(manifest, clean, k) == 0 for k in range(4))
    assert leaky.hash != clean.hash


def test_held_out_fold_tests_each_fold_once_and_validates_on_the_next() -> None:
    manifest = _manifest()
    cv = patient_split(manifest, folds=4, test_fraction=0, seed=0)
    tested = []
    for fold in range(4):
        held = held_out_fold(cv, fold)
        assert held.folds == 3
        assert np.array_equal(held.rows(split=TEST), np.flatnonzero(cv.assignments.fold == fold))
        assert np.array_equal(held.rows(split=CV, fold=0), np.flatnonzero(cv.assignments.fold == (fold + 1) % 4))
        assert shared_patients(manifest, held, 0) == 0
        tested.extend(held.rows(split=TEST))
    assert sorted(tested) == list(range(200))
    with pytest.raises(ValueError, match="without a test set"):
        held_out_fold(patient_split(manifest, folds=4, test_fraction=0.2, seed=0), 0)


def test_fold_paired_difference_averages_the_folds_and_resamples_patients() -> None:
    rng = np.random.default_rng(3)

    def sample(n: int, right: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        labels = rng.integers(0, 2, n)
        correct = rng.random(n) < right
        pred = np.where(correct, labels, 1 - labels)
        return labels, np.eye(2)[pred], np.repeat(np.arange(n // 5), 5)

    folds = [(sample(60, 0.9), sample(40, 0.7)), (sample(50, 0.8), sample(45, 0.8))]
    accuracy = lambda labels, probs: float((probs.argmax(1) == labels).mean())  # noqa: E731
    per_fold, interval = fold_paired_difference(accuracy, folds, n_boot=300, seed=1)
    expected = [accuracy(*a[:2]) - accuracy(*b[:2]) for a, b in folds]
    assert per_fold == pytest.approx(expected)
    assert interval.estimate == pytest.approx(np.mean(expected))
    assert interval.low < interval.estimate < interval.high
    assert "12 patients / 8 patients; 10 patients / 9 patients" in interval.method


def test_leakage_study_cross_validates_both_arms_and_averages_their_fold_differences(
    tmp_path: Path, synthetic_idc: Path
) -> None:
    data = experiment_dict(
        synthetic_idc,
        tmp_path / "results",
        name="leak",
        baselines=[{"name": "cancernet", "fixed": {"batch_size": 16}}],
        floors=["majority", "colour_forest"],
        search={"trials": 1, "max_epochs": 3, "grace_period": 1},
    )
    path = write_experiment(tmp_path / "leak.yaml", data)
    result = CliRunner().invoke(
        app, ["study", "leakage", str(path), "--bootstrap", "200", "--epochs", "1"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("leak").experiment_id
    (study,) = client.search_runs([experiment_id], f"tags.{tracking.RUN_TYPE} = 'study'")
    arms = client.search_runs([experiment_id], f"tags.{tracking.RUN_TYPE} = 'study_arm'")
    models = ("majority", "colour_forest", "cancernet")
    assert sorted(
        (r.data.tags[tracking.BASELINE], r.data.tags[tracking.PROTOCOL], r.data.tags[tracking.FOLD]) for r in arms
    ) == sorted((m, p, str(f)) for m in models for p in ("patch_random", "patient") for f in range(3))
    assert {r.info.status for r in [study, *arms]} == {tracking.FINISHED}
    assert all(r.data.tags[tracking.PARENT] == study.info.run_id for r in arms)
    assert study.data.params["epochs"] == "1" and study.data.params["folds"] == "3"
    assert {r.data.params["epochs"] for r in arms if r.data.tags[tracking.BASELINE] == "cancernet"} == {"1"}
    for run in arms:
        shared = int(run.data.tags["shared_test_patients"])
        assert (shared > 0) if run.data.tags[tracking.PROTOCOL] == "patch_random" else shared == 0
    # No arm is a trial: a leaderboard of this experiment would find nothing to rank.
    assert not client.search_runs([experiment_id], f"tags.{tracking.RUN_TYPE} = 'trial'")

    table = pd.read_csv(tmp_path / "results" / "leak" / "leakage.csv").set_index("group")
    for model in models:
        accuracy = {
            (r.data.tags[tracking.PROTOCOL], int(r.data.tags[tracking.FOLD])): r.data.metrics["test_accuracy"]
            for r in arms
            if r.data.tags[tracking.BASELINE] == model
        }
        differences = [100 * (accuracy["patch_random", f] - accuracy["patient", f]) for f in range(3)]
        row = table.loc[model]
        assert row.inflation_accuracy == pytest.approx(np.mean(differences))
        assert [row[f"inflation_fold{f}"] for f in range(3)] == pytest.approx(differences)
        assert row.inflation_accuracy_low <= row.inflation_accuracy <= row.inflation_accuracy_high
        assert row.inflation_accuracy_sd == pytest.approx(np.std(differences, ddof=1))
        assert row.accuracy_patient == pytest.approx(np.mean([accuracy["patient", f] for f in range(3)]))
        assert row.folds == 3
    assert table.loc["cancernet", "epochs"] == 1
    assert table.loc["majority", "row_kind"] == "floor"
    for name in ("leakage.md", "leakage.tex", "leakage.full.tex", "figures/leakage.png"):
        assert (tmp_path / "results" / "leak" / name).stat().st_size > 0
    assert any(line.startswith("majority (floor) ") for line in result.output.splitlines()), result.output
    # Each epoch of a model's arm is told as it ends, before the arm's test accuracy; floors train no epochs.
    lines = result.output.splitlines()
    told = r"cancernet +patient +fold 2 epoch 1 of at most 1: val loss [\d.]+, val accuracy [\d.]+"
    epoch = next(i for i, line in enumerate(lines) if re.fullmatch(told, line))
    assert re.fullmatch(r"cancernet +patient +fold 2 test accuracy [\d.]+", lines[epoch + 1])
    assert not any(line.startswith("majority") and " epoch " in line for line in lines)
    assert "over 3 folds of a patch-random and of a patient split, epoch budget 1" in result.output


def test_leakage_study_rejects_an_unknown_baseline_and_too_few_folds(tmp_path: Path, synthetic_idc: Path) -> None:
    path = write_experiment(tmp_path / "leak.yaml", experiment_dict(synthetic_idc, tmp_path / "results", name="leak"))
    result = CliRunner().invoke(app, ["study", "leakage", str(path), "--baseline", "vgg19"])
    assert result.exit_code == 2
    assert (
        "--baseline 'vgg19': not in the experiment; expected one of: majority, colour_forest, cancernet"
        in result.output
    )
    two = experiment_dict(
        synthetic_idc, tmp_path / "results", name="leak", protocol={"folds": 2, "test_fraction": 0.25, "seed": 0}
    )
    result = CliRunner().invoke(app, ["study", "leakage", str(write_experiment(tmp_path / "two.yaml", two))])
    assert result.exit_code == 2
    assert (
        "key 'protocol.folds' = 2: the leakage study holds out one fold for test and one for validation"
        in result.output
    )
    assert not (tmp_path / "results" / "mlflow.db").exists()
