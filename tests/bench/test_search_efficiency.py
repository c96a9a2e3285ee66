"""bench/search_efficiency.py in its smoke mode: a 2x2 grid trained for real, replayed through the
harness's searcher and ASHA, and the ratios it prints follow from its epochs (read at full
precision from --figures, not re-parsed from the table)."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import pytest

from tests.bench.conftest import BenchRun


def test_search_efficiency_smoke_compares_both_searches_with_the_grid(run_bench: Callable[..., BenchRun]) -> None:
    run = run_bench("search_efficiency.py", "--smoke")
    figures = run.figures
    grid = figures["grid"]
    # The smoke grid: 2 learning rates x 2 batch sizes, each trained for 3 epochs.
    assert [len(c["objectives"]) for c in grid["curves"]] == [3, 3, 3, 3]
    cap = grid["epochs"]
    assert cap == 4 * 3
    assert grid["best"] == max(c["objectives"][-1] for c in grid["curves"])
    assert figures["target"] == pytest.approx(grid["best"] - 0.005, rel=1e-9)
    assert f"grid: 4 configurations, {cap} epochs; its best objective {grid['best']:.4f}" in run.lines
    assert f"| grid | 1 | {cap}, {cap}, {cap} | 1.00, 1.00, 1.00 | 1/1 |" in run.lines
    assert list(figures["searches"]) == ["ASHA + TPE (harness)", "ASHA + random"]
    for label, search in figures["searches"].items():
        needed = search["epochs_to_target"]
        assert search["seeds"] == len(needed) == 2 and all(1 <= n <= cap for n in needed)
        assert (search["median"], search["mean"], search["max"]) == (
            statistics.median(needed),
            statistics.mean(needed),
            max(needed),
        )
        # A seed that needed less than the grid's budget reached the target; one that needed all of it may have.
        assert sum(n < cap for n in needed) <= search["reached"] <= 2
        for name in ("median", "mean", "max"):
            assert search["ratio"][name] == pytest.approx(search[name] / cap, rel=1e-9)
        ratio = search["ratio"]
        assert (
            f"| {label} | 2 | {search['median']:g}, {search['mean']:.1f}, {search['max']} "
            f"| {ratio['median']:.2f}, {ratio['mean']:.2f}, {ratio['max']:.2f} | {search['reached']}/2 |"
        ) in run.lines
