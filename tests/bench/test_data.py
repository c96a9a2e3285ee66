"""bench/data.py runs end to end in its smoke mode and prints both of its tables, which show the
figures it computed (read at full precision from --figures, not re-parsed from the tables)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.bench.conftest import BenchRun


def _rates(count: int, seconds: dict[str, float], rates: dict[str, float]) -> dict[str, float]:
    """Check each side's rate is `count` over its seconds; returns the rates."""
    assert seconds.keys() == rates.keys() and all(s > 0 for s in seconds.values())
    for side, rate in rates.items():
        assert rate == pytest.approx(count / seconds[side], rel=1e-9)
    return rates


def test_data_bench_smoke_prints_loading_and_indexing_rates(run_bench: Callable[..., BenchRun]) -> None:
    run = run_bench("data.py", "--smoke")
    figures = run.figures
    loading, indexing = (table.splitlines()[1:] for table in run.stdout.strip().split("\n\n"))
    # The smoke trees: 4 IDC patients of 20 patches; 9 BreakHis folders x 4 magnifications x 1 image.
    assert figures["rounds"] == 1
    assert [(name, row["images"]) for name, row in figures["loading"].items()] == [("IDC", 80), ("BreakHis", 36)]
    assert [(name, row["files"]) for name, row in figures["indexing"].items()] == [("IDC", 80), ("BreakHis", 36)]
    for (name, row), line in zip(figures["loading"].items(), loading, strict=True):
        seconds = row["seconds"]
        rate = _rates(row["images"], seconds, row["per_s"])
        assert row["ratio_uint8"] == pytest.approx(seconds["image_folder"] / seconds["cache_uint8"], rel=1e-9)
        assert row["ratio_cpu_norm"] == pytest.approx(seconds["image_folder"] / seconds["cache_cpu_norm"], rel=1e-9)
        assert line == (
            f"{name:<10}{row['images']:>7}{rate['image_folder']:>14,.0f}{rate['cache_uint8']:>14,.0f}"
            f"{row['ratio_uint8']:>8.1f}x{rate['cache_cpu_norm']:>16,.0f}{row['ratio_cpu_norm']:>8.1f}x"
        )
    for (name, row), line in zip(figures["indexing"].items(), indexing, strict=True):
        seconds = row["cpu_seconds"]
        rate = _rates(row["files"], seconds, row["per_s"])
        assert row["ratio"] == pytest.approx(seconds["read_digest_decode"] / seconds["decode_only"], rel=1e-9)
        assert line == (
            f"{name:<10}{row['files']:>7}{rate['decode_only']:>14,.0f}{rate['read_digest_decode']:>18,.0f}"
            f"{row['ratio']:>7.2f}x{rate['indexer']:>14,.0f}"
        )
