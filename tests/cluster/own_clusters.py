"""A namespaced cluster of its own for a fault test module whose fault touches the whole cluster
(the tracking server restarted, the head killed), its namespaces named with this file's prefix."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy

from tools.netns_cluster import NetnsCluster, NetnsUnavailable, ensure_netns_permitted

PREFIX = "hfb"


def cluster_of_its_own(tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any) -> Iterator[NetnsCluster]:
    """Yield a started cluster (skipped with the reason where namespaces are not permitted), torn
    down when the module ends, also on failure."""
    try:
        ensure_netns_permitted()
    except NetnsUnavailable as exc:
        pytest.skip(f"namespaced cluster unavailable: {exc}")
    with NetnsCluster(tmp_path_factory.mktemp(name), prefix=PREFIX, **options) as cluster:
        yield cluster


def points_stored_twice(store_url: str) -> list[tuple]:
    """Return (run, metric, step, rows) for every metric point the MLflow store holds more than once,
    read from its tables directly (PostgreSQL), not through MLflow."""
    engine = sqlalchemy.create_engine(store_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.text(
                    "SELECT run_uuid, key, step, count(*) FROM metrics GROUP BY run_uuid, key, step HAVING count(*) > 1"
                )
            )
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()
