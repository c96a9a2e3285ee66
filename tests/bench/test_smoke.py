"""bench/cache_vs_png.py and bench/models.py run end to end in their smoke modes, so a bench that
breaks fails the tests (their figures are read, not their timings judged)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_cache_vs_png_smoke_reads_the_same_patches_both_ways() -> None:
    out = _run(str(BENCH / "cache_vs_png.py"), "--smoke")
    # The smoke tree: 4 synthetic patients of 20 patches each.
    assert out.splitlines()[0].startswith("80 patches from ")
    png, cache, ratio = (
        float(m.replace(",", ""))
        for m in re.search(
            r"PNG decode .*\(([\d,]+) patches/s\)\nuint8 cache .*\(([\d,]+) patches/s\)\n"
            r"ratio PNG/cache = ([\d.]+)x \(median of 1 ",
            out,
        ).groups()
    )
    assert ratio == pytest.approx(cache / png, rel=0.05, abs=0.06)


def test_models_smoke_writes_both_variants_of_cancernet(tmp_path: Path) -> None:
    out = _run(str(BENCH / "models.py"), "--smoke", "--out", str(tmp_path))
    assert re.search(r"^cancernet\s+48x48\s", out, re.MULTILINE)
    [table] = list(tmp_path.glob("models-*.csv"))
    rows = list(csv.DictReader(table.open()))
    assert [(r["model"], r["variant"]) for r in rows] == [("cancernet", "harness"), ("cancernet", "bare")]
    harness, bare = (float(r["images_per_s"]) for r in rows)
    assert float(rows[0]["ratio_harness_over_bare"]) == pytest.approx(harness / bare)


def test_every_bench_has_a_smoke_mode_that_a_test_runs() -> None:
    tests = "".join(p.read_text() for p in (REPO / "tests" / "bench").glob("test_*.py"))
    for bench in sorted(b for b in BENCH.glob("*.py") if not b.name.startswith("_")):  # _x.py: a bench's helper
        assert '"--smoke"' in bench.read_text(), f"{bench.name} has no --smoke mode"
        assert bench.name in tests, f"no test in tests/bench runs {bench.name}"


def test_checkpoint_smoke_measures_both_layouts_on_the_same_states() -> None:
    out = _run(str(BENCH / "checkpoint.py"), "--smoke")
    rows = re.findall(r"^\s+(\d) +(\d) +([\d.]+) +[\d.]+ +([\d.]+) +[\d.]+$", out, re.MULTILINE)
    assert [(epoch, best) for epoch, best, _, _ in rows] == [("1", "1"), ("2", "1")]
    (_, _, before_1, after_1), (_, _, before_2, after_2) = rows
    # Epoch 1 is the best: its weights are written once, as the model's, so the state is smaller by
    # one copy of the weights; at epoch 2 the best epoch is older and both layouts are the same.
    assert float(after_1) < float(before_1) and after_2 == before_2
    pattern = r"checkpoint_every 2: before ([\d.]+) MB .*, after ([\d.]+) MB .*ratio after/before ([\d.]+)"
    every_2 = re.search(pattern, out)
    before, after, ratio = (float(v) for v in every_2.groups())
    assert after == pytest.approx(float(after_2) / 2, abs=0.1) and ratio == pytest.approx(after / before, abs=0.01)


def test_loader_smoke_times_both_paths_per_augmentation() -> None:
    out = _run(str(BENCH / "loader.py"), "--smoke")
    assert out.splitlines()[0].startswith("160 patches of 50x50 from synthetic; batch 128")
    rows = re.findall(
        r"^(\w+) +per-image +([\d,]+) images/s +batched +([\d,]+) images/s +ratio batched/per-image ([\d.]+)x$",
        out,
        re.MULTILINE,
    )
    assert [row[0] for row in rows] == ["pis", "dihedral", "none"]
    for _, per_image, batched, ratio in rows:
        per_image, batched = (float(v.replace(",", "")) for v in (per_image, batched))
        assert float(ratio) == pytest.approx(batched / per_image, abs=0.01)
