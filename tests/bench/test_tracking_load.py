"""bench/tracking_load.py --smoke: 4 writer processes log 5 epochs each through a real `harness
server` on 127.0.0.1, per backend; nothing may be lost or fail (its latencies are read, not judged:
its figures come at full precision from --figures and are checked against its printed row)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bench.conftest import BenchRun

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_tracking_load_smoke_loses_no_metric(backend: str, run_bench: Callable[..., BenchRun]) -> None:
    if backend == "postgresql" and not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("Debian's postgresql package is not installed (make test-cluster installs it as root)")
    run = run_bench("tracking_load.py", "--smoke", "--backends", backend, timeout=900)
    figures = run.figures
    assert (figures["writers"], figures["epochs"], figures["metrics_per_epoch"]) == (4, 5, 30)
    assert list(figures["backends"]) == [backend]
    load = figures["backends"][backend]
    assert load["expected"] == 4 * 5 * 30
    assert (load["written"], load["lost"], load["failed_calls"], load["errors"]) == (load["expected"], 0, 0, [])
    # One metric batch per writer and epoch, each timed.
    assert load["batches"] == 4 * 5 and 0 < load["p50_ms"] <= load["p99_ms"]
    assert load["points_per_s"] == pytest.approx(load["written"] / load["seconds"], rel=1e-9)
    assert run.line(f"{backend} ") == (
        f"{backend:<11} {load['written']:>8,.0f} / {load['expected']:<8,.0f} lost {load['lost']:<4,.0f} "
        f"failed calls {load['failed_calls']:<4,.0f} batch p50 {load['p50_ms']:7.1f} ms  "
        f"p99 {load['p99_ms']:7.1f} ms  {load['points_per_s']:8,.0f} points/s"
    )
    assert "View run" not in run.stdout
