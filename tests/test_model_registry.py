"""Logging and registering models: MLflow is pointed at the harness's store for the call only."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import baselines
from harness import tracking
from harness.config import TrainParams
from harness.model_registry import (
    RECIPE,
    TORCH_MODEL_URI,
    WINNER,
    _logging_to,
    log_fold_model,
    log_served_model,
    register,
)
from harness.served_model import ClassProbabilities, InputMismatch, InputRecipe, ServedFold

SCOPED = ("MLFLOW_TRACKING_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Return the URI of a new SQLite store, with MLflow's own URI and progress bars left unset."""
    for name in SCOPED:
        monkeypatch.delenv(name, raising=False)
    return tracking.open_store(f"sqlite:///{tmp_path / 'mlflow.db'}").uri


def test_mlflow_logs_to_the_store_for_the_block_only(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = mlflow.get_tracking_uri()
    with _logging_to(store):
        assert mlflow.get_tracking_uri() == store
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert mlflow.get_tracking_uri() == before
    assert [name for name in SCOPED if name in os.environ] == []
    # MLflow's URI is left unpinned: the environment still chooses it afterwards.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert mlflow.get_tracking_uri() == "http://127.0.0.1:1"


def test_a_uri_the_caller_set_is_set_again_after_the_block(store: str, tmp_path: Path) -> None:
    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    mlflow.set_tracking_uri(mine)
    try:
        with _logging_to(store):
            assert mlflow.get_tracking_uri() == store
        assert mlflow.get_tracking_uri() == mine
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # MLflow's own way to unset it


def test_a_served_model_is_logged_and_registered_in_the_store_named(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = mlflow.get_tracking_uri()
    tracker = tracking.tracker_for(store)
    experiment = tracker.experiment_id("registry")
    assert experiment is not None
    run_id = tracker.start_run(experiment, name="fold", run_type=tracking.RunType.FOLD, tags={}, params={})
    params = TrainParams(input_size=48, batch_size=2)
    recipe = InputRecipe(
        params=params, stored_hw=(50, 50), bags=False, keras=False, batch_size=2, threads=1, pads_edges=True
    )
    module = ClassProbabilities(baselines.create("cancernet", num_classes=2), params.normalisation).eval()
    examples = np.random.default_rng(0).integers(0, 256, (2, 50, 50, 3), dtype=np.uint8)
    torch_uri = log_fold_model(store, run_id, ServedFold(module, recipe, examples, recipe.model_inputs(examples)))
    served_uri = log_served_model(store, run_id, {0: torch_uri}, examples, ("non_idc", "idc"))
    version = register(store, "registry-cancernet", served_uri, alias=WINNER, tags={"k": "v"}, description="d")
    client = MlflowClient(store)
    found = client.get_model_version_by_alias("registry-cancernet", WINNER)
    assert (found.version, found.run_id, found.source) == (version, run_id, served_uri)
    assert client.get_run(run_id).data.tags[TORCH_MODEL_URI] == torch_uri
    assert mlflow.get_tracking_uri() == before
    assert [name for name in SCOPED if name in os.environ] == []
    # The registered entry point is the pyfunc on stored patches; the raw torch program stays the
    # fold run's own model, and is copied into the served model's artifacts.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    uri = "models:/registry-cancernet@winner"
    assert set(mlflow.models.get_model_info(uri).flavors) == {"python_function"}
    assert RECIPE in mlflow.models.get_model_info(torch_uri).metadata
    served = mlflow.pyfunc.load_model(uri)
    assert list(served.predict(examples[:, :, :40]).columns) == ["non_idc", "idc", "predicted"]
    with pytest.raises(InputMismatch, match=r"^expected uint8 RGB images N x 50 x 50 x 3 .*got uint8 array of shape"):
        served.predict(np.zeros((1, 50, 52, 3), np.uint8))
