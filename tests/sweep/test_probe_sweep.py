"""A head sweep end to end on eva's BreakHis protocol (real Ray, Optuna and MLflow on SQLite,
real PNG files in the release's 40X layout): linear and kNN probes on a tiny Phikon-family
encoder read from a file in Phikon's published key names, beside a CNN and the floors; the
embeddings computed once before the trials, the winners registered with the encoder's digest, and
the eva table with each probe above eva's published row of its encoder."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

import baselines
from harness import tracking
from harness.cli import app
from harness.data.cache import open_patch_cache
from harness.data.datasets.breakhis import EVA_LABELS, write_release_40x
from tests.conftest import ensure_local_ray, write_experiment

pytestmark = pytest.mark.e2e

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32}
NAME = "eva-probes"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Return the results folder, the weights file and the CLI output of one probe sweep."""
    tmp = tmp_path_factory.mktemp("probes")
    root = write_release_40x(tmp / "breakhis")
    weights = baselines.write_random_encoder("phikon", tmp / "phikon.bin", **TINY)
    probe = {"encoder": "phikon", "encoder_arch": TINY, "epochs_max": 3, "batch_size": 64}
    experiment = {
        "name": NAME,
        "dataset": {"name": "breakhis", "root": str(root), "image_size": [32, 48], "allow_subset": True},
        "protocol": {"name": "eva", "folds": 2, "seed": 0},
        "baselines": [
            {"name": "linear_probe", "pretrained": str(weights), "fixed": probe},
            {"name": "knn_probe", "pretrained": str(weights), "fixed": {**probe, "epochs_max": 1}},
            {"name": "resnet18", "fixed": {"freeze": "none", "input_size": 32, "batch_size": 64, "epochs_max": 1}},
        ],
        "search": {
            "trials": 2,
            "max_epochs": 3,
            "grace_period": 1,
            "metric": "val_balanced_accuracy",
            "max_concurrent": 2,
            "retrain": "all_folds",
            "retrain_epochs": 1,
        },
        "resources": {"cpu": 1},
        "training": {"patience": 2},
        "leaderboard": {"tables": ["summary", "eva"]},
        "output_dir": str(tmp / "results"),
    }
    path = write_experiment(tmp / "probes.yaml", experiment)
    ensure_local_ray()
    result = CliRunner().invoke(app, ["sweep", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    board = CliRunner().invoke(app, ["leaderboard", str(path)], catch_exceptions=False)
    assert board.exit_code == 0, board.output
    return tmp / "results", weights, result.output


def _runs(results: Path, run_type: str) -> list:
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(NAME)
    return client.search_runs([experiment.experiment_id], f"tags.{tracking.RUN_TYPE} = '{run_type}'")


def test_every_probe_trial_reads_one_cache_and_logs_its_encoder_and_digest(swept: tuple[Path, Path, str]) -> None:
    results, weights, _ = swept
    trials = _runs(results, "trial")
    probes = [r for r in trials if r.data.tags[tracking.BASELINE].endswith("_probe")]
    assert sorted(r.data.tags[tracking.BASELINE] for r in probes) == ["knn_probe"] * 2 + ["linear_probe"] * 2
    digest = baselines.weights_digest(weights)
    for run in probes:
        assert (run.data.params["encoder"], run.data.params["encoder_sha256"]) == ("phikon", digest)
        assert run.info.status == "FINISHED" and "test_balanced_accuracy" in run.data.metrics
    # Both probes read one encoder on one dataset: the sweep embedded its images once.
    assert len(list((results / "_data").rglob("embeddings-phikon-*.npy"))) == 1


def test_the_registered_probe_predicts_on_raw_patches_with_its_encoder_by_reference(
    swept: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    results, weights, _ = swept
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{results / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{NAME}-linear_probe@ensemble")
    [cache] = [p for p in (results / "_data").rglob("*.npy") if not p.name.startswith("embeddings-")][:1]
    stored = np.asarray(open_patch_cache(cache)[:3])
    predicted = model.predict(stored)
    assert list(predicted.columns) == [*EVA_LABELS, "predicted"]
    np.testing.assert_allclose(predicted[list(EVA_LABELS)].sum(axis=1), 1.0, rtol=1e-5)
    # The encoder is held by reference (its file and that file's digest), and each fold program
    # is a head on its embeddings, not a copy of the encoder.
    info = mlflow.models.get_model_info(f"models:/{NAME}-linear_probe@ensemble")
    encoder = (info.metadata or {})["recipe"]["encoder"]
    assert (encoder["name"], encoder["sha256"], encoder["weights"]) == (
        "phikon",
        baselines.weights_digest(weights),
        str(weights),
    )
    [fold_run, *_] = [r for r in _runs(results, "fold") if r.data.tags[tracking.BASELINE] == "linear_probe"]
    program = mlflow.models.get_model_info(fold_run.data.tags["torch_model_uri"])
    width = baselines.encoder_dim("phikon", **TINY)
    assert tuple(program.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, width)


def test_the_eva_table_puts_each_probe_above_evas_row_of_its_encoder(swept: tuple[Path, Path, str]) -> None:
    results, _, _ = swept
    table = pd.read_csv(results / NAME / "eva.csv")
    for probe in ("linear_probe", "knn_probe"):
        rows = table[table.group == probe].set_index("row_kind")
        assert rows.loc["harness", "encoder"] == "phikon"
        # eva's published BreakHis row of Phikon, and the difference to it.
        assert rows.loc["published", "model"].startswith("published: eva: Phikon - ")
        assert rows.loc["published", "test_balanced_accuracy"] == 0.717
        difference = rows.loc["harness", "test_balanced_accuracy"] - 0.717
        assert rows.loc["difference", "test_balanced_accuracy"] == pytest.approx(difference, abs=1e-4)
    assert set(table.group[table.row_kind == "harness"]) == {"linear_probe", "knn_probe", "resnet18"}
    assert set(table.group[table.row_kind == "floor"]) == {"majority (floor)", "colour_forest (floor)"}
    # Every other encoder eva publishes on BreakHis is listed too, best first.
    others = table[(table.row_kind == "published") & ~table.group.isin(["linear_probe", "knn_probe"])]
    assert len(others) == 14 and list(others.test_balanced_accuracy) == sorted(others.test_balanced_accuracy)[::-1]
