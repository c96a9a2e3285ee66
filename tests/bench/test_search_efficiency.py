"""bench/search_efficiency.py in its smoke mode: a 2x2 grid trained for real, replayed through the
harness's searcher and ASHA, and the ratios it prints follow from its epochs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_search_efficiency_smoke_compares_both_searches_with_the_grid() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "search_efficiency.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    grid = re.search(r"^grid: 4 configurations, (\d+) epochs; its best objective ([\d.]+)$", out, re.M)
    cap = int(grid[1])
    assert cap == 4 * 3
    assert re.search(rf"^\| grid \| 1 \| {cap}, {cap}, {cap} \| 1.00, 1.00, 1.00 \| 1/1 \|$", out, re.M)
    number = r"([\d.]+)"
    for label in ("ASHA \\+ TPE \\(harness\\)", "ASHA \\+ random"):
        three = ", ".join([number] * 3)
        row = re.search(rf"^\| {label} \| 2 \| {three} \| {three} \| ([012])/2 \|$", out, re.M)
        median, mean, worst, *printed = (float(g) for g in row.groups()[:6])
        assert 1 <= median <= worst <= cap
        assert mean == pytest.approx(median, abs=0.05)  # of two seeds, the median is the mean
        for ratio, epochs_needed in zip(printed, (median, mean, worst)):
            # Printed to two decimals (and the mean's epochs to one).
            assert ratio == pytest.approx(epochs_needed / cap, abs=0.0051 + 0.05 / cap)
