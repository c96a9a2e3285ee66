"""A sweep on a two-node Ray cluster logging to an `mlflow server` process on 127.0.0.1: trial
placement, failures, the fold retrain and ensemble, and a worker node lost mid-sweep."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import ray
import requests
from mlflow import MlflowClient
from ray.cluster_utils import Cluster
from ray.exceptions import RayTaskError
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial
from typer.testing import CliRunner

from harness import tracking
from harness.cli import app
from harness.config import load_experiment
from harness.data.cache import open_patch_cache
from harness.data.manifest import read_manifest
from harness.data.prepare import load_or_index, prepare
from harness.data.splits import TEST, read_split
from harness.environment import EMBEDDED_RAY, environment
from harness.leaderboard import build_leaderboard
from harness.leaderboard.attach import tag_registered_models
from harness.model_registry import MODEL_URI, TORCH_MODEL_URI
from harness.server import ServerProcess, start_server
from harness.sweep._failures import trial_error
from harness.sweep._trial import _error_tags
from tests.conftest import experiment_dict, free_port, write_experiment

pytestmark = pytest.mark.cluster

FOLDS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("mlflow_server")
    process = start_server(f"sqlite:///{tmp / 'mlflow.db'}", tmp / "artifacts", port=free_port(), workers=1)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    # One CPU per node: two concurrent trials can only run on two different nodes. The head also
    # serves Ray Client (ray://) on a free port. An embedded Ray an earlier test left up is ended.
    # Its workers run at the test's priority, as an embedded Ray's do (harness.environment), not
    # niced below the tests that run beside it.
    ray.shutdown()
    client_port = free_port()
    with environment(EMBEDDED_RAY):
        two_nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "ray_client_server_port": client_port})
        two_nodes.worker = two_nodes.add_node(num_cpus=1)
    two_nodes.client_port = client_port
    two_nodes.wait_for_nodes()
    ray.init(address=two_nodes.address)
    # Both nodes on loopback (tests/conftest.py): no traffic over the machine's network address.
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    ray.shutdown()
    yield two_nodes
    two_nodes.shutdown()


def _runs(uri: str, experiment: str, run_type: str) -> list:
    """Return the runs of `run_type`, leaving out the floors' (test_sweep checks those)."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], f"tags.{tracking.RUN_TYPE} = '{run_type}'")
    return [r for r in runs if r.data.tags.get(tracking.FLOOR) != "true"]


def _wait_until_every_cpu_is_free(cluster: Cluster) -> None:
    """Wait until the previous sweep's job has given back its resources (Ray frees them asynchronously)."""
    ray.init(address=cluster.address)
    try:
        deadline = time.monotonic() + 60
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        ray.shutdown()


def _sweep(cluster: Cluster, server: ServerProcess, path: Path) -> str:
    result = CliRunner().invoke(
        app, ["sweep", str(path), "--address", cluster.address, "--tracking-uri", server.uri], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def failing_experiment(tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path) -> Path:
    """Six brute-forced CancerNet points: batch 1 raises in BatchNorm (3 trials), lr 1e30 diverges
    (1 trial), two finish; the winner is retrained on every fold."""
    tmp = tmp_path_factory.mktemp("cluster_sweep")
    data = experiment_dict(
        synthetic_idc,
        tmp / "results",
        name="cluster-failures",
        protocol={"folds": FOLDS, "test_fraction": 0.25, "seed": 0},
        baselines=[
            {
                "name": "cancernet",
                "fixed": {"epochs_max": 2, "dropout_conv": 0.1, "dropout_fc": 0.3},
                "search": {
                    "batch_size": {"type": "categorical", "choices": [1, 8]},
                    "lr": {"type": "categorical", "choices": [0.01, 0.02, 1.0e30]},
                },
            }
        ],
        search={
            "trials": 6,
            "max_epochs": 2,
            "grace_period": 2,
            "sampler": "bruteforce",
            "seed": 0,
            "max_failures": 1,
            "max_concurrent": 2,
        },
    )
    return write_experiment(tmp / "failures.yaml", data)


@pytest.fixture(scope="module")
def failing_sweep(failing_experiment: Path, cluster: Cluster, server: ServerProcess) -> str:
    """The output of the sweep of `failing_experiment`."""
    return _sweep(cluster, server, failing_experiment)


def test_trials_run_on_both_nodes_and_log_to_the_server(
    failing_sweep: str, cluster: Cluster, server: ServerProcess
) -> None:
    trials = _runs(server.uri, "cluster-failures", "trial")
    assert len(trials) == 6
    assert len({r.data.tags[tracking.TRIAL_ID] for r in trials}) == 6
    nodes = {n for r in trials for n in r.data.tags[tracking.NODE_IDS].split(",")}
    assert nodes == {cluster.head_node.node_id, cluster.worker.node_id}
    sweep = _runs(server.uri, "cluster-failures", "sweep")[0]
    assert {r.data.tags[tracking.PARENT] for r in trials} == {sweep.info.run_id}
    artifacts = {a.path for a in MlflowClient(server.uri).list_artifacts(sweep.info.run_id, "optuna")}
    assert "optuna/cancernet_history.png" in artifacts


def test_raising_and_diverging_trials_fail_with_their_errors(failing_sweep: str, server: ServerProcess) -> None:
    trials = _runs(server.uri, "cluster-failures", "trial")
    by_params = {(r.data.params["batch_size"], float(r.data.params["lr"])): r for r in trials}
    for (batch, lr), run in by_params.items():
        if batch == "1":
            assert run.info.status == "FAILED"
            assert "Expected more than 1 value per channel" in run.data.tags[tracking.ERROR]
        elif lr > 1:
            assert run.info.status == "FAILED"
            assert "training loss became nan" in run.data.tags[tracking.ERROR]
        else:
            assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
        if batch == "1":
            # max_failures 1: Tune retried the raising trial once, in the same MLflow run.
            assert run.data.tags[tracking.ATTEMPTS] == "2" and run.data.tags[tracking.RETRIES] == "1"
            assert run.data.tags[tracking.FAILURE_CAUSE] == "error"
        elif lr > 1:
            # A diverged loss would diverge again: the trial ends FAILED at once, never retried.
            assert run.data.tags[tracking.ATTEMPTS] == "1"
            assert tracking.RETRIES not in run.data.tags
            assert run.data.tags[tracking.FAILURE_CAUSE] == "diverged"
    assert "FAILED" in failing_sweep
    board = build_leaderboard(server.uri, "cluster-failures")
    assert board.table.loc[0, "failed"] == 4 and board.table.loc[0, "trials"] == 6


def _rest_runs(uri: str, experiment: str) -> list[dict]:
    """Return every run of `experiment` as MLflow's REST API lists them."""
    found = requests.get(f"{uri}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": experiment})
    body = {"experiment_ids": [found.json()["experiment"]["experiment_id"]], "max_results": 1000}
    return requests.post(f"{uri}/api/2.0/mlflow/runs/search", json=body, timeout=30).json()["runs"]


def test_the_rest_api_shows_every_run_named_terminal_and_with_its_outcome(
    failing_sweep: str, server: ServerProcess
) -> None:
    runs = _rest_runs(server.uri, "cluster-failures")
    seen = []
    for run in runs:
        info, tags = run["info"], {t["key"]: t["value"] for t in run["data"]["tags"]}
        expected = {"FINISHED": ("completed", "stopped_early"), "FAILED": ("failed",)}[info["status"]]
        assert tags[tracking.OUTCOME] in expected, info["run_name"]
        seen.append((tags[tracking.RUN_TYPE], tags.get(tracking.FLOOR) == "true", info["run_name"], info["status"]))
    trials = sorted((name, status) for kind, floor, name, status in seen if kind == "trial")
    assert [name for name, _ in trials] == [f"cancernet t{i:02d}" for i in range(6)]
    assert sorted(status for _, status in trials) == ["FAILED"] * 4 + ["FINISHED"] * 2
    folds = sorted(name for kind, floor, name, _ in seen if kind == "fold" and not floor)
    assert folds == [f"cancernet fold {f}" for f in range(FOLDS)]
    assert [name for kind, floor, name, _ in seen if kind == "ensemble" and not floor] == ["cancernet ensemble"]
    [sweep] = [name for kind, _, name, _ in seen if kind == "sweep"]
    assert re.fullmatch(r"cluster-failures sweep-\d{8}-\d{6}", sweep)


def test_a_trial_error_is_read_from_the_drivers_staged_copy(cluster: Cluster, tmp_path: Path) -> None:
    # Tune calls on_trial_error before it syncs the error file to storage, where Trial.get_error
    # looks: a trial failing on another node was once closed with "unknown error".
    ray.init(address=cluster.address)
    try:
        storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="t0")
        trial = Trial("cancernet", config={}, storage=storage, trial_id="t0", stub=True)
        Path(trial.local_path).mkdir(parents=True)
        trial.handle_error(RuntimeError("a lost heartbeat"))
        assert trial.get_error() is None
        assert "a lost heartbeat" in trial_error(trial)
        raised = RayTaskError("train", "Traceback ...", ValueError("Expected more than 1 value per channel"))
        trial.handle_error(raised)
        assert trial.get_pickled_error() is None
        tags = _error_tags(trial)
        assert tags[tracking.ERROR].startswith("ValueError: Expected more than 1 value per channel")
        assert tags[tracking.FAILURE_CAUSE] == "error"
    finally:
        ray.shutdown()


def test_fold_retrain_and_softmax_ensemble(failing_sweep: str, server: ServerProcess) -> None:
    client = MlflowClient(server.uri)
    trials = _runs(server.uri, "cluster-failures", "trial")
    finished = [r for r in trials if r.info.status == "FINISHED"]
    # Best objective; on a tie the lower validation loss (both finished trials may reach the same accuracy).
    winner = min(finished, key=lambda r: (-r.data.metrics["objective"], r.data.metrics["sel_val_loss"]))
    folds = [
        r for r in _runs(server.uri, "cluster-failures", "fold") if r.data.tags[tracking.PARENT] == winner.info.run_id
    ]
    assert sorted(int(r.data.tags[tracking.FOLD]) for r in folds) == list(range(FOLDS))
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in folds)
    predictions = [pd.read_csv(client.download_artifacts(r.info.run_id, "test/predictions.csv")) for r in folds]
    mean = np.mean([p[["prob_0", "prob_1"]].to_numpy() for p in predictions], axis=0)
    expected = float((mean.argmax(1) == predictions[0].label.to_numpy()).mean())
    (ensemble,) = _runs(server.uri, "cluster-failures", "ensemble")
    assert ensemble.data.tags[tracking.PARENT] == winner.info.run_id
    assert ensemble.data.metrics["test_accuracy"] == pytest.approx(expected)
    assert client.get_run(winner.info.run_id).data.metrics["ensemble_test_accuracy"] == pytest.approx(expected)
    for run, frame in zip(folds, predictions):
        assert run.data.metrics["test_accuracy"] == pytest.approx((frame.pred == frame.label).mean())
    row = build_leaderboard(server.uri, "cluster-failures").table.iloc[0]
    assert row.best_run_id == winner.info.run_id and row.ensemble_test_accuracy == pytest.approx(expected)
    assert row.folds_mean_test_accuracy == pytest.approx(np.mean([(p.pred == p.label).mean() for p in predictions]))
    # Each fold task's epochs reach the driver's console (through a Ray queue) before its end line.
    lines = failing_sweep.splitlines()
    for fold in range(FOLDS):
        told = [i for i, line in enumerate(lines) if line.startswith(f"epoch cancernet  fold {fold} epoch ")]
        assert [lines[i].split(":")[0] for i in told] == [
            f"epoch cancernet  fold {fold} epoch {epoch} of at most 2" for epoch in (1, 2)
        ]
        (end,) = [i for i, line in enumerate(lines) if line.startswith(f"fold  cancernet  fold {fold} retrained")]
        assert told[-1] < end


def _stored_test_images(experiment: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Return the sweep's test images as the harness stored them, and their manifest rows."""
    config = load_experiment(experiment)
    manifest, _ = load_or_index(config.dataset)
    data = prepare(manifest, config.dataset, config.protocol, config.output_dir / "_data")
    rows = read_split(data.split_path).rows(split=TEST)
    return np.asarray(open_patch_cache(data.cache_path)[rows]), read_manifest(data.manifest_path)[0].iloc[rows]


def test_winners_are_registered_models_that_reproduce_the_stored_predictions(
    failing_experiment: Path, failing_sweep: str, server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    client = MlflowClient(server.uri)
    name = "cluster-failures-cancernet"
    ensemble, winner = (client.get_model_version_by_alias(name, alias) for alias in ("ensemble", "winner"))
    ensemble_run, winner_run = client.get_run(ensemble.run_id), client.get_run(winner.run_id)
    assert ensemble_run.data.tags[tracking.RUN_TYPE] == "ensemble" and winner_run.data.tags[tracking.FOLD] == "0"
    for version, run in ((ensemble, ensemble_run), (winner, winner_run)):
        assert version.tags[tracking.SPLIT_HASH] == run.data.tags[tracking.SPLIT_HASH]
        assert version.tags["test_accuracy"] == f"{run.data.metrics['test_accuracy']:.6g}"
        assert version.tags[tracking.WINNER] == run.data.tags[tracking.WINNER]
    images, rows = _stored_test_images(failing_experiment)
    served = {
        alias: mlflow.pyfunc.load_model(f"models:/{name}@{alias}").predict(images) for alias in ("ensemble", "winner")
    }
    # The registered entry point is the pyfunc; the fold's raw torch program is its run's torch_model.
    assert set(mlflow.models.get_model_info(f"models:/{name}@winner").flavors) == {"python_function"}
    assert TORCH_MODEL_URI in winner_run.data.tags
    # `harness leaderboard` sets the baseline's row as tags of both versions.
    board = build_leaderboard(server.uri, "cluster-failures")
    assert sorted(tag_registered_models(server.uri, ["cluster-failures"], board.table)) == [f"{name} v1", f"{name} v2"]
    row = board.table.iloc[0]
    for version in (ensemble, winner):
        tags = client.get_model_version(name, version.version).tags
        assert tags["leaderboard.ensemble_test_accuracy"] == f"{row.ensemble_test_accuracy:.6g}"
        assert tags["leaderboard.trials"] == "6" and tags["winner_run_id"] == row.best_run_id
    classes = winner.tags["classes"].split(",")
    for run, output in ((ensemble_run, served["ensemble"]), (winner_run, served["winner"])):
        stored = pd.read_csv(client.download_artifacts(run.info.run_id, "test/predictions.csv"))
        assert stored.rel_path.tolist() == rows.rel_path.tolist()
        assert list(output.columns) == [*classes, "predicted"]
        # Written as float32 text, read back as float64: equal once back in float32.
        columns = [f"prob_{c}" for c in range(len(classes))]
        assert np.array_equal(stored[columns].to_numpy().astype(np.float32), output[classes].to_numpy())
        assert [classes[c] for c in stored.pred] == output.predicted.tolist()


def test_a_sweep_through_ray_client(
    failing_sweep: str, tmp_path: Path, synthetic_idc: Path, cluster: Cluster, server: ServerProcess
) -> None:
    # With ray:// the Tune loop runs on the head; trials and the fold retrain still log to the server.
    data = experiment_dict(
        synthetic_idc,
        tmp_path / "results",
        name="cluster-client",
        baselines=[{"name": "cancernet", "fixed": {"epochs_max": 1, "batch_size": 8}}],
        search={"trials": 2, "max_epochs": 1, "sampler": "random", "register_models": False},
    )
    path = write_experiment(tmp_path / "client.yaml", data)
    head = cluster.address.split(":")[0]
    port = cluster.client_port
    _wait_until_every_cpu_is_free(cluster)
    result = CliRunner().invoke(
        app,
        ["sweep", str(path), "--address", f"ray://{head}:{port}", "--tracking-uri", server.uri],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output + _client_server_logs(cluster)
    trials = _runs(server.uri, "cluster-client", "trial")
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    folds, ensembles = _runs(server.uri, "cluster-client", "fold"), _runs(server.uri, "cluster-client", "ensemble")
    assert len(folds) == FOLDS and len(ensembles) == 1
    # register_models: false logs no model and registers none.
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("cluster-client").experiment_id
    assert client.search_logged_models([experiment]) == []
    assert client.search_model_versions("name = 'cluster-client-cancernet'") == []
    assert not [r for r in folds + ensembles if {MODEL_URI, TORCH_MODEL_URI} & set(r.data.tags)]


def _client_server_logs(cluster: Cluster) -> str:
    """Return the tail of each Ray Client server log on the head, to say why a session failed."""
    logs = sorted(Path(cluster.head_node.get_logs_dir_path()).glob("ray_client_server*.err"))
    return "".join(f"\n--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]) for log in logs)


def test_unreachable_tracking_server_fails_fast(tmp_path: Path, synthetic_idc: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    path = write_experiment(tmp_path / "e.yaml", experiment_dict(synthetic_idc, tmp_path / "results"))
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["sweep", str(path), "--tracking-uri", uri])
    assert result.exit_code == 2
    assert uri in result.output and "cannot be reached" in result.output
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "results").exists()


def test_losing_a_worker_node_retries_its_trial_on_the_head(
    failing_sweep: str, tmp_path: Path, synthetic_idc: Path, cluster: Cluster, server: ServerProcess
) -> None:
    data = experiment_dict(
        synthetic_idc,
        tmp_path / "results",
        name="cluster-node-loss",
        baselines=[{"name": "cancernet", "fixed": {"epochs_max": 4, "batch_size": 8}}],
        search={
            "trials": 2,
            "max_epochs": 4,
            "grace_period": 4,
            "sampler": "random",
            "max_failures": 2,
            "max_concurrent": 2,
            "retrain": "none",
        },
    )
    path = write_experiment(tmp_path / "node-loss.yaml", data)
    worker_id = cluster.worker.node_id
    _wait_until_every_cpu_is_free(cluster)
    removed = threading.Event()

    def remove_worker_once_it_trains() -> None:
        client = MlflowClient(server.uri)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = client.get_experiment_by_name("cluster-node-loss")
            runs = (
                client.search_runs([found.experiment_id], f"tags.{tracking.NODE_ID} = '{worker_id}'") if found else []
            )
            if any(client.get_metric_history(r.info.run_id, "val_loss") for r in runs):
                cluster.remove_node(cluster.worker)
                removed.set()
                return
            time.sleep(0.5)

    remover = threading.Thread(target=remove_worker_once_it_trains, daemon=True)
    remover.start()
    _sweep(cluster, server, path)
    remover.join(timeout=10)
    assert removed.is_set(), "no trial trained on the worker node, so none could lose it"
    trials = _runs(server.uri, "cluster-node-loss", "trial")
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    moved = [r for r in trials if r.data.tags[tracking.NODE_IDS].startswith(worker_id)]
    assert moved and all(r.data.tags[tracking.ATTEMPTS] == "2" and r.data.tags[tracking.RETRIES] == "1" for r in moved)
    assert all(r.data.tags[tracking.NODE_ID] == cluster.head_node.node_id for r in moved)
