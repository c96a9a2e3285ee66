"""bench/scale.py in its smoke mode: a release-shaped IDC tree indexed, split and cached in
processes of their own, and the leaderboard over the store it writes. Its figures are read at full
precision (--figures) and checked against each other and against its table."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from tests.bench.conftest import BenchRun


def _row(name: str, measured: dict[str, float], note: str) -> str:
    """Return the table row the bench prints for a measured process."""
    return f"| {name} | {measured['wall_s']:,.1f} | {measured['peak_rss_gb']:.2f} | {note} |"


def test_scale_smoke_measures_every_step_and_the_leaderboard(run_bench: Callable[..., BenchRun]) -> None:
    run = run_bench("scale.py", "--smoke")
    figures = run.figures
    # 1% of each class of the release (1,987 + 788) over 30 patients.
    assert figures["tree"]["patches"] == 2775
    assert run.lines[0] == f"2,775 patches of the release's layout written in {figures['tree']['wall_s']:.1f} s"
    steps = figures["steps"]
    assert list(steps) == ["index", "split", "cache"]
    for name, measured in steps.items():
        assert 0 < measured["wall_s"] < math.inf and 0 < measured["peak_rss_gb"] < math.inf
        assert _row(name, measured, "") in run.lines
    total = figures["data_steps"]
    assert total["wall_s"] == pytest.approx(sum(s["wall_s"] for s in steps.values()), rel=1e-9)
    assert total["peak_rss_gb"] == max(s["peak_rss_gb"] for s in steps.values())
    assert _row("index + split + cache", total, "target < 300 s, < 2.5 GB") in run.lines
    # One sweep and, per baseline, its trials, the winner, 5 folds and the ensemble: 73 runs.
    store, leaderboard = figures["store"], figures["leaderboard"]
    assert store["runs"] == leaderboard["runs"] == 73
    assert f"| writing a store of 73 runs | {store['wall_s']:,.1f} | - | not a target |" in run.lines
    assert _row("harness leaderboard over 73 runs", leaderboard, "target < 60 s") in run.lines
    assert figures["ranked_baselines"] == 8
    assert "the leaderboard's summary table ranks 8 baselines by test accuracy" in run.lines
