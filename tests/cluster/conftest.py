"""Tests on a cluster of several hosts on one machine, each in its own network namespace
(tools/netns_cluster.py). Every test here is marked `cluster` (make test-cluster) and skips, saying
why, where network namespaces or PostgreSQL are not available."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.netns_cluster import (
    NetnsCluster,
    NetnsUnavailable,
    ensure_netns_permitted,
    list_namespaces,
    namespace_pids,
)

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder `cluster` (this hook sees the whole session's items), before
    `-m` selects: `make test` leaves them out."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)


def require_netns() -> None:
    """Skip the test, in one line, where this machine cannot run a namespaced cluster."""
    try:
        ensure_netns_permitted()
    except NetnsUnavailable as exc:
        pytest.skip(f"namespaced cluster unavailable: {exc}")


def leftovers(cluster: NetnsCluster, namespaces: list[str], pids: list[int]) -> list[str]:
    """Return what a stopped cluster left behind: namespaces, live processes, Ray folders, its slot."""
    left = [f"namespace {n}" for n in namespaces if n in list_namespaces()]
    left += [f"process {p}" for p in pids if Path(f"/proc/{p}").exists()]
    for path in (cluster.ray_temp_dir(cluster.head).parent, cluster.slot_record):
        left += [f"file {path}"] if path.exists() else []
    return left


@pytest.fixture(scope="session")
def netns_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    """A started cluster: Ray head (no CPUs), two workers of 2 CPUs, MLflow on PostgreSQL, a driver
    host. Torn down at the end of the session, also after a failure or Ctrl-C; the teardown fails
    if anything of it is left."""
    require_netns()
    cluster = NetnsCluster(tmp_path_factory.mktemp("netns_cluster"), workers=2, worker_cpus=2)
    try:
        cluster.start()
        yield cluster
    finally:
        namespaces = [h.namespace for h in [cluster.head, cluster.tracking, cluster.driver, *cluster.workers]]
        pids = [p for n in namespaces if n for p in namespace_pids(n)]
        cluster.stop()
    assert not leftovers(cluster, namespaces, pids)
