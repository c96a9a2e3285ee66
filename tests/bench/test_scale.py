"""bench/scale.py in its smoke mode: a release-shaped IDC tree indexed, split and cached in
processes of their own, and the leaderboard over the store it writes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

NUMBER = r"([\d,]+\.\d)"


def test_scale_smoke_measures_every_step_and_the_leaderboard() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--smoke"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    # 1% of each class of the release (1,987 + 788) over 30 patients.
    assert out.startswith("2,775 patches of the release's layout written in ")
    found = re.findall(rf"^\| (index|split|cache) \| {NUMBER} \| ([\d.]+) \|", out, re.M)
    steps = {name: (float(wall.replace(",", "")), float(rss)) for name, wall, rss in found}
    assert list(steps) == ["index", "split", "cache"] and all(w > 0 and r > 0 for w, r in steps.values())
    wall, rss = re.search(rf"^\| index \+ split \+ cache \| {NUMBER} \| ([\d.]+) \|", out, re.M).groups()
    assert float(wall) == pytest.approx(sum(w for w, _ in steps.values()), abs=0.2)  # four roundings to 0.1
    assert float(rss) == max(r for _, r in steps.values())
    # One sweep and, per baseline, its trials, the winner, 5 folds and the ensemble: 73 runs.
    assert re.search(r"^\| writing a store of 73 runs \|", out, re.M)
    assert re.search(rf"^\| harness leaderboard over 73 runs \| {NUMBER} \| [\d.]+ \| target < 60 s \|$", out, re.M)
    assert "the leaderboard's summary table ranks 8 baselines by test accuracy" in out
