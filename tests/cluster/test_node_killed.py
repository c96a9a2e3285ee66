"""A worker host lost mid-sweep (every process killed, its namespace gone): its trial is retried on
another node from its last checkpoint, in the same MLflow run, and nothing is lost or logged twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness import tracking
from tests.cluster.invariants import all_runs, assert_sweep_intact, trial_runs, trial_runs_through
from tests.cluster.sweeps import fault_experiment, node_ids, optuna_storage_of, own_cluster
from tests.conftest import wait_for
from tools.netns_cluster import NetnsCluster

pytestmark = pytest.mark.cluster

EXPERIMENT = "node-killed"
EPOCHS = 5
# Checkpoints fall on even epochs: a trial killed after logging epoch 3 resumes from epoch 2 and
# trains epoch 3 again, which its run holds already.
STRIKE_AT_EPOCH = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    yield from own_cluster(tmp_path_factory, "node_killed", workers=2, worker_cpus=1)


def test_a_killed_worker_hosts_trial_is_retried_elsewhere_in_its_run_without_a_step_twice(
    cluster: NetnsCluster, tmp_path: Path, synthetic_idc: Path
) -> None:
    experiment = fault_experiment(tmp_path, synthetic_idc, EXPERIMENT, epochs=EPOCHS)
    ids = node_ids(cluster)
    doomed, survivor = cluster.workers
    struck = threading.Event()

    def kill_once_it_trains() -> None:
        def trained() -> bool:
            return bool(trial_runs_through(cluster.store_url, EXPERIMENT, STRIKE_AT_EPOCH, node_ip=doomed.address))

        wait_for(trained, 300, f"a trial on {doomed.name} to log epoch {STRIKE_AT_EPOCH}")
        cluster.kill_host(doomed)
        struck.set()

    killer = threading.Thread(target=kill_once_it_trains, daemon=True)
    killer.start()
    done = cluster.sweep(experiment, timeout=600)
    killer.join(timeout=10)
    assert struck.is_set(), f"{doomed.name} was never killed: no trial of its reached epoch {STRIKE_AT_EPOCH}"
    assert done.returncode == 0, done.stdout + done.stderr
    assert_sweep_intact(cluster.store_url, EXPERIMENT, optuna_storage_of(experiment), trials=2)
    client = MlflowClient(cluster.store_url)
    runs = trial_runs(all_runs(client, EXPERIMENT))
    moved = [r for r in runs if r.data.tags[tracking.NODE_IDS].startswith(ids[doomed.address])]
    assert len(moved) == 1, [r.data.tags[tracking.NODE_IDS] for r in runs]
    tags = moved[0].data.tags
    assert tags[tracking.NODE_IDS] == f"{ids[doomed.address]},{ids[survivor.address]}"
    assert (tags[tracking.RETRIES], tags[tracking.ATTEMPTS], tags[tracking.OUTCOME]) == ("1", "2", "completed")
    history = client.get_metric_history(moved[0].info.run_id, "objective")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
