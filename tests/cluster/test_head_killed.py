"""The Ray head killed mid-sweep on the namespaced cluster (and with it the driver's connection):
the driver ends, `harness close-orphans` (what a job script runs after its driver) ends the runs it
left RUNNING, and `harness sweep --resume` on a new head (the workers rejoin it) finishes the sweep:
each trial counted once in its one run, its epochs complete and none logged twice."""

from __future__ import annotations

import subprocess
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
from tools.netns_cluster import BIN, NetnsCluster

pytestmark = pytest.mark.cluster

EXPERIMENT = "head-killed"
EPOCHS = 4
# Ray ends a driver that has not reached the GCS for this long (Ray's default, 60 s, made short).
GCS_LOST_S = "10"
# Checkpoints fall on even epochs: a trial struck after logging epoch 3 resumes from epoch 2 and
# trains epoch 3 again, which its run holds already.
STRIKE_AT_EPOCH = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    with own_cluster(tmp_path_factory, "head_killed", workers=1, worker_cpus=2) as cluster:
        yield cluster


def _struck_sweep(cluster: NetnsCluster, experiment: Path, log: Path) -> subprocess.CompletedProcess:
    """Start the sweep on the driver host, kill the head once a trial has logged STRIKE_AT_EPOCH,
    and return the driver's end (failing if it does not end)."""
    argv = [str(BIN / "harness"), "sweep", str(experiment), "--address", cluster.ray_address]
    with log.open("w") as out:
        driver = cluster.popen(
            cluster.driver,
            [*argv, "--tracking-uri", cluster.tracking_uri],
            env={"RAY_gcs_rpc_server_reconnect_timeout_s": GCS_LOST_S},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(
                lambda: (
                    driver.poll() is not None
                    or bool(trial_runs_through(cluster.store_url, EXPERIMENT, STRIKE_AT_EPOCH))
                ),
                300,
                f"a trial to log epoch {STRIKE_AT_EPOCH}",
            )
            assert driver.poll() is None, log.read_text()[-3000:]
            struck = time.monotonic()
            cluster.kill_head()
            driver.wait(timeout=180)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    print(f"\nhead killed; the driver ended {time.monotonic() - struck:.0f} s later, exit {driver.returncode}")
    return subprocess.CompletedProcess(driver.args, driver.returncode, log.read_text(), "")


def test_a_sweep_whose_head_was_killed_resumes_on_a_new_head_to_completion(
    cluster: NetnsCluster, tmp_path: Path, synthetic_idc: Path
) -> None:
    experiment = fault_experiment(tmp_path, synthetic_idc, EXPERIMENT, epochs=EPOCHS)
    first = _struck_sweep(cluster, experiment, tmp_path / "first.log")
    assert first.returncode != 0 and "GCS" in first.stdout, first.stdout[-3000:]
    close = [str(BIN / "harness"), "close-orphans", str(experiment), "--tracking-uri", cluster.tracking_uri]
    closed = cluster.run(cluster.driver, close, timeout=120)
    assert "ended KILLED (orphaned=true)" in closed.stdout, closed.stdout + closed.stderr
    client = MlflowClient(cluster.store_url)
    assert [r.info.run_name for r in all_runs(client, EXPERIMENT) if r.info.status == "RUNNING"] == []
    cluster.start_head()
    resumed = cluster.sweep(experiment, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_sweep_intact(cluster.store_url, EXPERIMENT, optuna_storage_of(experiment), trials=2, driver_interrupted=True)
    assert points_stored_twice(cluster.store_url) == []
    runs = all_runs(client, EXPERIMENT)
    for run in trial_runs(runs):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "objective"))
        assert steps == list(range(1, EPOCHS + 1)), (run.info.run_name, steps)
        # Continued to its end by the resumed sweep: no longer its dead driver's orphan.
        assert (run.info.status, run.data.tags[tracking.OUTCOME]) == (tracking.FINISHED, "completed"), run.data.tags
        assert tracking.ORPHANED not in run.data.tags
    sweeps = [r for r in runs if r.data.tags.get(tracking.RUN_TYPE) == tracking.RunType.SWEEP]
    assert len(sweeps) == 1 and sweeps[0].info.status == tracking.FINISHED and "resumed_at" in sweeps[0].data.tags
    assert tracking.ORPHANED not in sweeps[0].data.tags
