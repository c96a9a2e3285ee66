"""The environment a sweep sets lasts as long as the sweep, and reaches the workers of the Ray it starts."""

from __future__ import annotations

import os

import pytest
import ray

from harness.environment import EMBEDDED_RAY, MLFLOW_QUIET
from harness.sweep import _driver

# What the trial and fold workers need (MLflow's quiet settings), and what Ray's own processes read.
WORKER_SETTINGS = {**MLFLOW_QUIET, **EMBEDDED_RAY}


@ray.remote
def _seen(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


@ray.remote
def _niceness() -> int:
    return os.nice(0)


def test_the_workers_of_the_ray_a_sweep_starts_inherit_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The session's shared Ray would be joined, not started: end it (the next test that sweeps
    # starts it again).
    ray.shutdown()
    names = [*WORKER_SETTINGS, "TUNE_GLOBAL_CHECKPOINT_S"]
    for name in names:
        monkeypatch.delenv(name, raising=False)
    with _driver._tune_environment(), _driver._ray(None):
        assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == str(_driver.STATE_SYNC_SECONDS)
        seen = ray.get(_seen.remote(list(WORKER_SETTINGS)))
        niceness = ray.get(_niceness.remote())
    assert seen == WORKER_SETTINGS
    # Trials compete for the CPU at the driver's own priority, not Ray's default nice 15.
    assert niceness == os.nice(0)
    # Gone with the sweep (ray.init sets a few variables of its own, which are Ray's business).
    assert [name for name in names if name in os.environ] == []
