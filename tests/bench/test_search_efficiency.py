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
    assert cap == 4 * 3 and re.search(rf"^\| grid \| 1 \| {cap}, {cap} \| 1.00, 1.00 \| 1/1 \|$", out, re.M)
    for label in ("ASHA \\+ TPE \\(harness\\)", "ASHA \\+ random"):
        row = re.search(rf"^\| {label} \| 2 \| ([\d.]+), (\d+) \| ([\d.]+), ([\d.]+) \| ([012])/2 \|$", out, re.M)
        median, worst, median_ratio, worst_ratio = (float(g) for g in row.groups()[:4])
        assert 1 <= median <= worst <= cap
        assert median_ratio == pytest.approx(median / cap, abs=0.0051)  # printed to two decimals
        assert worst_ratio == pytest.approx(worst / cap, abs=0.0051)
