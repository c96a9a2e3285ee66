"""bench/sweep_overhead.py runs end to end in its smoke mode: it reads back only the sweep's trial
runs (not its floors') and prints the wall times and their ratio."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_sweep_overhead_smoke_times_both_sides_on_the_trials_and_prints_the_ratio() -> None:
    done = subprocess.run(
        [sys.executable, "bench/sweep_overhead.py", "--smoke"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Both sides train the same 2 trials (the bench runs the sweep without floors).
    assert re.search(
        r"^round 1: harness sweep [\d.]+ s, bare Tuner [\d.]+ s \(2 trials x 1 epochs each\)$",
        done.stdout,
        re.MULTILINE,
    ), done.stdout
    found = re.search(
        r"^median wall time: harness ([\d.]+) s, bare Tune ([\d.]+) s; ratio harness/bare ([\d.]+) ",
        done.stdout,
        re.MULTILINE,
    )
    assert found, done.stdout
    harness, bare, ratio = (float(v) for v in found.groups())
    assert ratio == pytest.approx(harness / bare, abs=0.02)
