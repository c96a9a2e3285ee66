"""The leakage study: a patch-random arm that really mixes patients, a patient arm that never does,
and an inflation that is the difference of what the two arms logged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness import tracking
from harness.cli import app
from harness.data.splits import CV, TEST, patch_random_split, patient_split, shared_patients

from .conftest import experiment_dict, write_experiment


def test_patch_random_split_shares_patients_and_the_patient_split_never_does() -> None:
    patients = np.repeat([f"p{i:02d}" for i in range(20)], 10)
    manifest = pd.DataFrame({"rel_path": [f"{i}.png" for i in range(200)], "patient_id": patients,
                             "label": np.random.default_rng(0).integers(0, 2, 200)})
    leaky = patch_random_split(manifest, folds=4, test_fraction=0.2, seed=0)
    clean = patient_split(manifest, folds=4, test_fraction=0.2, seed=0)
    for split in (leaky, clean):
        assert len(split.rows(split=TEST)) == pytest.approx(40, abs=2)
        assert sorted(set(split.assignments.fold[split.assignments.split == CV])) == [0, 1, 2, 3]
    assert all(shared_patients(manifest, leaky, k) >= 5 for k in range(4))
    assert all(shared_patients(manifest, clean, k) == 0 for k in range(4))
    assert leaky.hash != clean.hash


def test_leakage_study_logs_two_arms_per_model_and_their_difference(tmp_path: Path, synthetic_idc: Path) -> None:
    data = experiment_dict(synthetic_idc, tmp_path / "results", name="leak",
                           baselines=[{"name": "cancernet", "fixed": {"epochs_max": 1, "batch_size": 16}}],
                           floors=["majority"], search={"trials": 1, "max_epochs": 1, "grace_period": 1})
    path = write_experiment(tmp_path / "leak.yaml", data)
    result = CliRunner().invoke(app, ["study", "leakage", str(path), "--bootstrap", "200"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("leak").experiment_id
    (study,) = client.search_runs([experiment_id], f"tags.{tracking.RUN_TYPE} = 'study'")
    arms = client.search_runs([experiment_id], f"tags.{tracking.RUN_TYPE} = 'study_arm'")
    assert {(r.data.tags[tracking.BASELINE], r.data.tags[tracking.PROTOCOL]) for r in arms} == {
        ("majority", "patch_random"), ("majority", "patient"), ("cancernet", "patch_random"), ("cancernet", "patient")}
    assert all(r.data.tags[tracking.PARENT] == study.info.run_id for r in arms)
    for run in arms:
        shared = int(run.data.tags["shared_test_patients"])
        assert (shared > 0) if run.data.tags[tracking.PROTOCOL] == "patch_random" else shared == 0
        leaky = run.data.tags[tracking.PROTOCOL] == "patch_random"
        assert (run.data.tags[tracking.SPLIT_HASH] == study.data.tags["patch_random_split_hash"]) == leaky
    # No arm is a trial: a leaderboard of this experiment would find nothing to rank.
    assert not client.search_runs([experiment_id], f"tags.{tracking.RUN_TYPE} = 'trial'")
    table = pd.read_csv(tmp_path / "results" / "leak" / "leakage.csv").set_index("group")
    for model in ("majority", "cancernet"):
        metrics = {r.data.tags[tracking.PROTOCOL]: r.data.metrics for r in arms if r.data.tags[tracking.BASELINE] == model}
        difference = 100 * (metrics["patch_random"]["test_accuracy"] - metrics["patient"]["test_accuracy"])
        assert table.loc[model, "inflation_accuracy"] == pytest.approx(difference)
        assert table.loc[model, "accuracy_patient"] == pytest.approx(metrics["patient"]["test_accuracy"])
    assert table.loc["majority", "row_kind"] == "floor"
    for name in ("leakage.md", "leakage.tex", "figures/leakage.png"):
        assert (tmp_path / "results" / "leak" / name).stat().st_size > 0
    assert "| majority (floor) |" in result.output


def test_leakage_study_rejects_an_unknown_baseline(tmp_path: Path, synthetic_idc: Path) -> None:
    path = write_experiment(tmp_path / "leak.yaml", experiment_dict(synthetic_idc, tmp_path / "results", name="leak"))
    result = CliRunner().invoke(app, ["study", "leakage", str(path), "--baseline", "vgg19"])
    assert result.exit_code == 2
    assert "--baseline 'vgg19': not in the experiment; expected one of: majority, colour_forest, cancernet" in result.output
    assert not (tmp_path / "results" / "mlflow.db").exists()
