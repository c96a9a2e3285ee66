"""The MLflow server restarted mid-sweep on the namespaced cluster: the trials' and the driver's
calls made while it was down are retried until it answers again, and every epoch is stored once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness import tracking
from tests.cluster.invariants import (
    all_runs,
    assert_sweep_intact,
    points_stored_twice,
    trial_runs,
    trial_runs_through,
)
from tests.cluster.sweeps import fault_experiment, optuna_storage_of, own_cluster
from tests.conftest import wait_for
from tools.netns_cluster import NetnsCluster

pytestmark = pytest.mark.cluster

EXPERIMENT = "tracking-restarted"
EPOCHS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    with pytest.MonkeyPatch.context() as env:
        # A restart on a loaded machine (SIGTERM, PostgreSQL's MLflow start, the health wait) may
        # outlast the harness's default wait: the trials must wait it out, not give up.
        env.setenv(tracking.OUTAGE_ENV, "600")  # read by every process the cluster starts
        with own_cluster(tmp_path_factory, "tracking_restarted", workers=1, worker_cpus=2) as cluster:
            yield cluster


def test_a_tracking_server_restarted_mid_sweep_loses_and_repeats_no_epoch(
    cluster: NetnsCluster, tmp_path: Path, synthetic_idc: Path
) -> None:
    experiment = fault_experiment(tmp_path, synthetic_idc, EXPERIMENT, epochs=EPOCHS)
    outage: list[float] = []

    def restart_once_a_trial_trains() -> None:
        wait_for(lambda: bool(trial_runs_through(cluster.store_url, EXPERIMENT, 1)), 300, "a trial to log epoch 1")
        outage.append(time.time())
        cluster.restart_tracking()
        outage.append(time.time())

    restarter = threading.Thread(target=restart_once_a_trial_trains, daemon=True)
    restarter.start()
    done = cluster.sweep(experiment, timeout=600)
    restarter.join(timeout=120)
    assert len(outage) == 2, "the tracking server was never restarted: no trial logged epoch 1"
    assert done.returncode == 0, done.stdout + done.stderr
    assert_sweep_intact(cluster.store_url, EXPERIMENT, optuna_storage_of(experiment), trials=2)
    assert points_stored_twice(cluster.store_url) == []
    client = MlflowClient(cluster.store_url)
    stamps = []
    for run in trial_runs(all_runs(client, EXPERIMENT)):
        history = client.get_metric_history(run.info.run_id, "objective")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), run.info.run_name
        stamps += [m.timestamp / 1000 for m in history]
    # The fault landed mid-sweep: an epoch was logged (its batch stamped) while the server was
    # down, and so stored only by a retry.
    down, up = outage
    retried = [stamp for stamp in stamps if down < stamp < up]
    assert retried, (down, up, sorted(stamps))
    print(f"\ntracking server down {up - down:.1f} s mid-sweep; {len(retried)} epoch(s) logged then, each stored once")
