"""bench/tracking_load.py --smoke: 8 writer processes log 5 epochs each through a real `harness
server` on 127.0.0.1, per backend; nothing may be lost or fail (its latencies are read, not judged)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_tracking_load_smoke_loses_no_metric(backend: str) -> None:
    if backend == "postgresql" and not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("Debian's postgresql package is not installed (make test-cluster installs it as root)")
    done = subprocess.run(
        [sys.executable, "bench/tracking_load.py", "--smoke", "--backends", backend],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(
        rf"^{backend}\s+([\d,]+) / ([\d,]+)\s+lost (\d+)\s+failed calls (\d+)\s+batch p50\s+[\d.]+ ms",
        done.stdout,
        re.MULTILINE,
    )
    assert found, done.stdout
    written, expected, lost, failed = (int(v.replace(",", "")) for v in found.groups())
    assert expected == 8 * 5 * 30
    assert (written, lost, failed) == (expected, 0, 0)
    assert "View run" not in done.stdout
