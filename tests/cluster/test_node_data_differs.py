"""A worker host whose prepared data is not the driver's (HARNESS_DATA_DIR names other data): the
sweep is refused before any trial starts, in one line naming the node and both manifest hashes,
exit 2, and nothing is left half-written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.config import DatasetSpec, ProtocolSpec
from harness.data.datasets.idc import write_synthetic_idc
from harness.data.manifest import manifest_hash, read_manifest
from harness.data.prepare import index_dataset, prepare
from harness.sweep._nodes import DATA_DIR_ENV
from tests.cluster.sweeps import fault_experiment, node_ids, own_cluster
from tools.netns_cluster import NetnsCluster

pytestmark = pytest.mark.cluster

EXPERIMENT = "node-data-differs"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    yield from own_cluster(tmp_path_factory, "node_data", workers=1, worker_cpus=1)


def _other_prepared_data(folder: Path) -> str:
    """Prepare another synthetic IDC tree under `folder`/_data, as a node's own copy of other data;
    returns its manifest hash."""
    spec = DatasetSpec(name="idc", root=write_synthetic_idc(folder / "idc", patients=8, seed=2), allow_subset=True)
    return prepare(index_dataset(spec)[0], spec, ProtocolSpec(folds=3), folder / "_data").manifest_hash


def test_a_node_reading_other_data_refuses_the_sweep_in_one_line_before_any_run(
    cluster: NetnsCluster, tmp_path: Path, synthetic_idc: Path
) -> None:
    theirs = _other_prepared_data(tmp_path / "node")
    stray = cluster.add_worker(env={DATA_DIR_ENV: str(tmp_path / "node" / "_data")})
    experiment = fault_experiment(tmp_path, synthetic_idc, EXPERIMENT, epochs=1)
    done = cluster.sweep(experiment, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    (manifest,) = (tmp_path / "results" / "_data" / "manifests").glob("idc-*.parquet")
    ours = manifest_hash(read_manifest(manifest)[0])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    node = f"node {stray.address} ({node_ids(cluster)[stray.address][:12]})"
    assert errors[0].startswith(f"error: {node} reads manifest hash {theirs[:16]}"), errors[0]
    assert f"but the driver indexed {ours[:16]}" in errors[0]
    client = MlflowClient(cluster.store_url)
    found = client.get_experiment_by_name(EXPERIMENT)
    assert found is None or not client.search_runs([found.experiment_id])
    assert not list((tmp_path / "results").glob(f"{EXPERIMENT}/ray/sweep-*"))
