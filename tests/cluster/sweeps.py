"""What the fault tests on the namespaced cluster share besides the stores' checks: a cluster of
their own (a fault that kills a host or cuts it off damages the cluster it strikes), a small
experiment file, and the Ray nodes by host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.config import load_experiment
from tests.conftest import experiment_dict, write_experiment
from tools.netns_cluster import NetnsCluster, NetnsUnavailable, ensure_netns_permitted

# Every namespace these tests make starts with it (tools/netns_cluster.py adds the slot and host).
PREFIX = "hfa"


def own_cluster(tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any) -> Iterator[NetnsCluster]:
    """Yield a started cluster for one test module (skipped with the reason where namespaces are not
    permitted); it is torn down when the module ends, also on failure."""
    try:
        ensure_netns_permitted()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    with NetnsCluster(tmp_path_factory.mktemp(name), prefix=PREFIX, **options) as cluster:
        yield cluster


def fault_experiment(folder: Path, root: Path, name: str, *, epochs: int, trials: int = 2, **search: Any) -> Path:
    """Write a small sweep of `trials` CancerNet trials of `epochs` epochs each on `root` (no early
    stop, one epoch after another checkpointed every second epoch, no retrain, no floors); returns its path."""
    data = experiment_dict(
        root,
        folder / "results",
        name=name,
        baselines=[{"name": "cancernet", "fixed": {"batch_size": 8, "epochs_max": epochs}}],
        search={
            "trials": trials,
            "max_epochs": epochs,
            "grace_period": epochs,
            "sampler": "random",
            "max_failures": 2,
            "max_concurrent": trials,
            "retrain": "none",
            **search,
        },
        training={"patience": epochs, "checkpoint_every": 2},
        floors=[],
    )
    return write_experiment(folder / f"{name}.yaml", data)


def optuna_storage_of(experiment: Path) -> str:
    """Return the Optuna storage URL the sweep of `experiment` uses (the default, beside its results)."""
    return load_experiment(experiment).resolved_optuna_storage()


def node_ids(cluster: NetnsCluster) -> dict[str, str]:
    """Return the Ray node id of each alive node, by its host's address."""
    return {node["NodeManagerAddress"]: node["NodeID"] for node in cluster.ray_nodes()}
