"""bench/cache_vs_png.py, bench/checkpoint.py, bench/loader.py and bench/models.py run end to end
in their smoke modes, so a bench that breaks fails the tests. Each writes its figures at full
precision (--figures): the tests check the bench's arithmetic on those and that its printed lines
show them, never a timing."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bench.conftest import BenchRun
from tests.conftest import REPO

BENCH = REPO / "bench"
RunBench = Callable[..., BenchRun]


def test_cache_vs_png_smoke_reads_the_same_patches_both_ways(run_bench: RunBench) -> None:
    run = run_bench("cache_vs_png.py", "--smoke")
    figures = run.figures
    # The smoke tree: 4 synthetic patients of 20 patches each, read once each way.
    assert figures["patches"] == 80 and figures["rounds"] == 1
    assert run.lines[0].startswith("80 patches from ")
    for side, label in (("png", "PNG decode "), ("cache", "uint8 cache ")):
        measured = figures[side]
        assert len(measured["seconds"]) == 1 and measured["median_s"] == statistics.median(measured["seconds"])
        assert measured["patches_per_s"] == pytest.approx(80 / measured["median_s"], rel=1e-9)
        line = run.line(label)
        assert f"{measured['median_s'] * 1e3:8.1f} ms/epoch" in line
        assert line.endswith(f"({measured['patches_per_s']:,.0f} patches/s)")
    assert figures["ratio"] == pytest.approx(figures["png"]["median_s"] / figures["cache"]["median_s"], rel=1e-9)
    ratio = run.line("ratio PNG/cache = ")
    assert ratio == f"ratio PNG/cache = {figures['ratio']:.1f}x (median of 1 interleaved rounds)"


def test_models_smoke_writes_both_variants_of_cancernet(run_bench: RunBench, tmp_path: Path) -> None:
    run = run_bench("models.py", "--smoke", "--out", str(tmp_path))
    assert list(run.figures["models"]) == ["cancernet"]
    model = run.figures["models"]["cancernet"]
    for kind in ("harness", "bare"):
        # One round of one step each (the smoke mode), in a process of its own.
        [measured] = model["runs"][kind]
        assert model["images_per_s"][kind] == measured["images_per_s"] > 0
        assert model["peak_mb"][kind] == measured["peak_mb"] > 0
    speed, peak = model["images_per_s"], model["peak_mb"]
    assert model["ratio"] == pytest.approx(speed["harness"] / speed["bare"], rel=1e-9)
    assert (
        f"{'cancernet':<18}{model['input']:>12}{speed['harness']:>15.2f}{speed['bare']:>12.2f}{model['ratio']:>8.3f}"
        f"{peak['harness']:>12.0f}{peak['bare']:>10.0f}"
    ) in run.lines
    # The CSV holds the same figures.
    [table] = list(tmp_path.glob("models-*.csv"))
    rows = list(csv.DictReader(table.open()))
    assert [(r["model"], r["variant"]) for r in rows] == [("cancernet", "harness"), ("cancernet", "bare")]
    for row in rows:
        assert float(row["images_per_s"]) == speed[row["variant"]]
        assert float(row["ratio_harness_over_bare"]) == model["ratio"]


def test_every_bench_has_a_smoke_mode_that_a_test_runs() -> None:
    tests = "".join(p.read_text() for p in (REPO / "tests" / "bench").glob("test_*.py"))
    for bench in sorted(b for b in BENCH.glob("*.py") if not b.name.startswith("_")):  # _x.py: a bench's helper
        assert '"--smoke"' in bench.read_text(), f"{bench.name} has no --smoke mode"
        assert bench.name in tests, f"no test in tests/bench runs {bench.name}"


def test_checkpoint_smoke_measures_both_layouts_on_the_same_states(run_bench: RunBench) -> None:
    run = run_bench("checkpoint.py", "--smoke")
    figures = run.figures
    rows = figures["epoch_rows"]
    assert figures["epochs"] == 2 and [(r["epoch"], r["best_epoch"]) for r in rows] == [(1, 1), (2, 1)]
    first, second = rows
    # Epoch 1 is the best: its weights are written once, as the model's, so the state is smaller by
    # one copy of the weights; at epoch 2 the best epoch is older and both layouts are the same.
    assert first["after_bytes"] < first["before_bytes"] and second["after_bytes"] == second["before_bytes"]
    for r in rows:
        assert (
            f"{r['epoch']:>5} {r['best_epoch']:>4} {r['before_bytes'] / 1e6:>10.1f} {r['before_s']:>9.3f} "
            f"{r['after_bytes'] / 1e6:>9.1f} {r['after_s']:>8.3f}"
        ) in run.lines
    before = figures["before"]
    assert before["mb"] == pytest.approx((first["before_bytes"] + second["before_bytes"]) / 2 / 1e6, rel=1e-9)
    assert before["seconds"] == pytest.approx((first["before_s"] + second["before_s"]) / 2, rel=1e-9)
    # Every epoch's checkpoint, and every second epoch's (epoch 2 alone), over the 2 epochs.
    for every, written in ((1, rows), (2, [second])):
        after = figures["after"][f"every_{every}"]
        assert after["mb"] == pytest.approx(sum(r["after_bytes"] for r in written) / 2 / 1e6, rel=1e-9)
        assert after["seconds"] == pytest.approx(sum(r["after_s"] for r in written) / 2, rel=1e-9)
        assert after["ratio_bytes"] == pytest.approx(after["mb"] / before["mb"], rel=1e-9)
        assert after["ratio_seconds"] == pytest.approx(after["seconds"] / before["seconds"], rel=1e-9)
        assert run.line(f"per epoch, checkpoint_every {every}: ") == (
            f"per epoch, checkpoint_every {every}: before {before['mb']:.1f} MB {before['seconds']:.3f} s, after "
            f"{after['mb']:.1f} MB {after['seconds']:.3f} s; ratio after/before {after['ratio_bytes']:.2f} (bytes) "
            f"{after['ratio_seconds']:.2f} (seconds)"
        )


def test_loader_smoke_times_both_paths_per_augmentation(run_bench: RunBench) -> None:
    run = run_bench("loader.py", "--smoke")
    figures = run.figures
    assert (figures["patches"], figures["batch"], figures["rounds"]) == (160, 128, 1)
    assert run.lines[0].startswith("160 patches of 50x50 from synthetic; batch 128")
    assert list(figures["augments"]) == ["pis", "dihedral", "none"]
    for augment, row in figures["augments"].items():
        # One full batch of the 160 patches each way (the last partial batch is dropped).
        assert row["images"] == 128
        for side in ("per_image", "batched"):
            [seconds] = row["seconds"][side.replace("_", "-")]
            assert row[side] == pytest.approx(128 / seconds, rel=1e-9)
        assert row["ratio"] == pytest.approx(row["batched"] / row["per_image"], rel=1e-9)
        assert run.line(f"{augment} ") == (
            f"{augment:<12} per-image {row['per_image']:>10,.0f} images/s   batched {row['batched']:>10,.0f} "
            f"images/s   ratio batched/per-image {row['ratio']:.2f}x"
        )
