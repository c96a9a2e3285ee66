"""Shared fixtures: the real IDC sample (skipped when absent), synthetic trees, experiment files."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from harness.environment import EMBEDDED_RAY, environment

# Every Ray the tests start in this process (the session's embedded Ray, ray.cluster_utils clusters)
# stays on 127.0.0.1: unless this is 0 when Ray is imported, Ray swaps a loopback address for the
# machine's network address and its processes talk over it. Tests reach only loopback and the
# namespaces they create (tools/netns_cluster.py).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# What the harness keeps per machine (weights digests) goes to a folder of this test run, not the
# user's ~/.cache; Ray workers and subprocesses inherit it.
os.environ.setdefault("HISTO_HARNESS_CACHE", tempfile.mkdtemp(prefix="histo-harness-tests-"))

REPO = Path(__file__).resolve().parents[1]
IDC_SAMPLE = REPO.parent / "shared" / "data" / "idc_sample"


@pytest.fixture(scope="session")
def idc_sample() -> Path:
    """The 24-patient IDC sample in ../shared/data, or a skip when this checkout has none."""
    if not IDC_SAMPLE.is_dir():
        pytest.skip(f"real IDC sample not found at {IDC_SAMPLE} (the shared/ folder beside the checkout)")
    return IDC_SAMPLE


@pytest.fixture(scope="session")
def synthetic_idc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-patient synthetic IDC tree of real PNG files."""
    from harness.data.datasets.idc import write_synthetic_idc

    return write_synthetic_idc(tmp_path_factory.mktemp("synthetic_idc"), patients=20, seed=1)


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist's workers start with COLUMNS=80, and rich fixes a console's width when it is made
    if COLUMNS is set: the CLI's consoles would then print 80 columns whatever a test asks for."""
    os.environ.pop("COLUMNS", None)


def ensure_local_ray() -> None:
    """Start this session's embedded Ray unless one is up. Every in-process sweep joins it (run_sweep
    reuses a running Ray), where each would otherwise start and stop its own, seconds each time;
    Ray ends it when the session's process exits. A test that needs a Ray of its own shuts this
    one down first, and the next caller starts it again."""
    import ray

    if not ray.is_initialized():
        # Started as a sweep starts its own, so that its trials are not niced below other work.
        with environment(EMBEDDED_RAY):
            ray.init(address="local", include_dashboard=False, configure_logging=False)


@pytest.fixture
def local_ray() -> None:
    """The session's embedded Ray, for a test that sweeps in this process."""
    ensure_local_ray()


def experiment_dict(root: Path, output_dir: Path, **sections: Any) -> dict[str, Any]:
    """Return a small valid experiment as a dict; keyword arguments replace whole sections."""
    data: dict[str, Any] = {
        "name": "t",
        "dataset": {"name": "idc", "root": str(root), "allow_subset": True},
        "protocol": {"folds": 3, "test_fraction": 0.25, "seed": 0},
        "baselines": ["cancernet"],
        "search": {"trials": 2, "max_epochs": 2, "grace_period": 1},
        "resources": {"cpu": 1},
        "training": {"patience": 2},
        "output_dir": str(output_dir),
    }
    data.update(sections)
    return data


def write_experiment(path: Path, data: dict[str, Any]) -> Path:
    """Write an experiment dict as YAML and return the path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


BREAKHIS_SAMPLE = REPO.parent / "shared" / "data" / "breakhis_sample"


@pytest.fixture(scope="session")
def breakhis_sample() -> Path:
    """The 70-image BreakHis sample in ../shared/data, or a skip when this checkout has none."""
    if not BREAKHIS_SAMPLE.is_dir():
        pytest.skip(f"real BreakHis sample not found at {BREAKHIS_SAMPLE} (the shared/ folder beside the checkout)")
    return BREAKHIS_SAMPLE


@pytest.fixture(scope="session")
def synthetic_bach(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic BACH part A tree (6 TIFF images per class, 192x256) and its RoI mask folder."""
    from harness.data.datasets.bach import write_synthetic_bach

    return write_synthetic_bach(tmp_path_factory.mktemp("synthetic_bach"), per_class=6, size=(192, 256), seed=2)


@pytest.fixture(scope="session")
def synthetic_breakhis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic BreakHis tree: 9 patient folders (8 numeric cores), 4 magnifications, 230x350 PNGs."""
    from harness.data.datasets.breakhis import write_synthetic_breakhis

    return write_synthetic_breakhis(tmp_path_factory.mktemp("synthetic_breakhis"), size=(230, 350), seed=3)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every second until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    """Return whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
