"""The full IDC release's size: a generated tree of 277,524 patches of 279 patients (the release's
class counts and file names) indexed, split and cached, each step in a process of its own (wall time
and peak RSS), then `harness leaderboard` over an MLflow store of 5,000 runs on that split.

The tree is hard links to a pool of a few hundred distinct synthetic patches (2% of them border
patches cut to 50x35), so it takes seconds and no disk space. Index and cache read every file as
they would the release; the store is written through the harness's tracker: one sweep, eight
baselines with their trials, and per baseline five retrained folds and an ensemble whose
predictions cover the split's real test and validation rows.

Targets (issue 17): index + split + cache under 5 minutes on 2 cores, peak RSS under 2.5 GB; the
leaderboard under 60 s.

Run: .venv/bin/python bench/scale.py                 (about 10 minutes, 2.3 GB free under --work)
     .venv/bin/python bench/scale.py --smoke         (1% of the patches over 30 patients, 60 runs: a test runs it)
     ... --figures PATH                              (also every figure at full precision, as JSON)
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _figures import Figures, add_figures_option
from PIL import Image

# Only data modules here: the split and cache steps run this file in a process of their own, and
# their peak RSS should not count MLflow or the training stack (the store is written by _scale_store).
from harness.data.datasets.idc import PATCH_SIZE, PUBLISHED_TOTALS
from harness.data.synthetic import synthetic_patch

HARNESS = [sys.executable, "-m", "harness"]
FOLDS = 5
POOL = 200  # distinct patches per class
EDGE_SHARE = 0.02


def _pool(folder: Path, rng: np.random.Generator) -> dict[int, list[Path]]:
    """Write the distinct patches each class's files link to; returns them per label."""
    folder.mkdir(parents=True)
    pool: dict[int, list[Path]] = {}
    for label in (0, 1):
        pool[label] = []
        for i in range(POOL):
            pixels = synthetic_patch(rng, label, rng.normal(0, 3, 3), size=PATCH_SIZE)
            if i < POOL * EDGE_SHARE:
                pixels = pixels[:35]
            path = folder / f"{label}-{i}.png"
            Image.fromarray(pixels).save(path)
            pool[label].append(path)
    return pool


def _shares(total: int, parts: int) -> list[int]:
    """Return `total` divided into `parts` counts that differ by at most one."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def write_release_tree(root: Path, fraction: float, patients: int) -> int:
    """Write the IDC layout with `fraction` of the release's per-class counts (all of them at 1.0)
    over `patients` patients, as hard links; returns the number of patches."""
    rng = np.random.default_rng(0)
    pool = _pool(root.parent / "pool", rng)
    counts = {label: _shares(round(PUBLISHED_TOTALS[f"class_{label}"] * fraction), patients) for label in (0, 1)}
    written = 0
    for p in range(patients):
        pid = str(10000 + p)
        for label in (0, 1):
            folder = root / pid / str(label)
            folder.mkdir(parents=True)
            for i in range(counts[label][p]):
                x, y = 1 + 50 * (i % 200), 1 + 50 * (i // 200 + 100 * label)
                os.link(pool[label][rng.integers(POOL)], folder / f"{pid}_idx5_x{x}_y{y}_class{label}.png")
            written += counts[label][p]
    return written


def measured(command: list[str]) -> tuple[float, float]:
    """Run `command` to its end; returns its wall seconds and peak RSS in GB. Raises on failure."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024**2


def step(name: str, work: Path) -> None:
    """Run one data step in this process: split the indexed manifest, or pack its cache."""
    from harness.data.cache import build_patch_cache
    from harness.data.manifest import manifest_hash, read_manifest
    from harness.data.splits import patient_split, write_split

    manifest, _ = read_manifest(work / "manifest.parquet")
    if name == "split":
        split = patient_split(manifest, folds=FOLDS, test_fraction=0.2, seed=0)
        write_split(split, work / "splits")
    else:
        build_patch_cache(manifest, manifest_hash(manifest), work / "cache")


def _row(name: str, seconds: float, rss: float | None, note: str = "") -> None:
    """Print one row of the table; returns nothing."""
    rss_text = f"{rss:.2f}" if rss is not None else "-"
    print(f"| {name} | {seconds:,.1f} | {rss_text} | {note} |", flush=True)


def _step_row(name: str, figures: dict[str, float], note: str = "") -> None:
    """Print the row of a measured process's figures (see `_measured`); returns nothing."""
    _row(name, figures["wall_s"], figures["peak_rss_gb"], note)


def _measured(wall_s: float, peak_rss_gb: float) -> dict[str, float]:
    """Return a step's wall seconds and peak RSS by name."""
    return {"wall_s": wall_s, "peak_rss_gb": peak_rss_gb}


def main() -> None:
    """Print wall time and peak RSS of each step at the release's size, and of the leaderboard."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1%% of the patches, 30 patients, a 60-run store")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--step", choices=("split", "cache"), help=argparse.SUPPRESS)
    add_figures_option(parser)
    args = parser.parse_args()
    if args.step:
        return step(args.step, args.work)
    figures = Figures(args.figures)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # the store's creation notes
    fraction, patients, runs = (0.01, 30, 60) if args.smoke else (1.0, PUBLISHED_TOTALS["patients"], 5000)
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        started = time.perf_counter()
        patches = figures.record("tree", "patches", value=write_release_tree(work / "idc", fraction, patients))
        seconds = figures.record("tree", "wall_s", value=time.perf_counter() - started)
        print(f"{patches:,} patches of the release's layout written in {seconds:.1f} s")
        print("\n| step | wall s | peak RSS GB | |\n|---|---:|---:|---|")
        index = [*HARNESS, "data", "index", "--root", str(work / "idc"), "--out", str(work / "manifest.parquet")]
        steps = {"index": _measured(*measured(index + (["--allow-subset"] if args.smoke else [])))}
        _step_row("index", steps["index"])
        for name in ("split", "cache"):
            steps[name] = _measured(*measured([sys.executable, __file__, "--step", name, "--work", str(work)]))
            _step_row(name, steps[name])
        figures.record("steps", value=steps)
        total = figures.record(
            "data_steps",
            value=_measured(sum(s["wall_s"] for s in steps.values()), max(s["peak_rss_gb"] for s in steps.values())),
        )
        _step_row("index + split + cache", total, "target < 300 s, < 2.5 GB")
        from _scale_store import EXPERIMENT, write_store

        from harness.data.manifest import read_manifest

        manifest, _ = read_manifest(work / "manifest.parquet")
        uri = f"sqlite:///{work / 'mlflow.db'}"
        started = time.perf_counter()
        written = write_store(uri, manifest, next((work / "splits").glob("split-*.parquet")), runs)
        store = figures.record("store", value={"runs": written, "wall_s": time.perf_counter() - started})
        _row(f"writing a store of {store['runs']:,} runs", store["wall_s"], None, "not a target")
        board = [*HARNESS, "leaderboard", EXPERIMENT, "--tracking-uri", uri, "--output-dir", str(work / "results")]
        leaderboard = figures.record("leaderboard", value={"runs": written, **_measured(*measured(board))})
        _step_row(f"harness leaderboard over {leaderboard['runs']:,} runs", leaderboard, "target < 60 s")
        [summary] = (work / "results").rglob("summary.csv")
        ranked = pd.read_csv(summary).query("row_kind == 'harness' and test_accuracy.notna()")
        count = figures.record("ranked_baselines", value=len(ranked))
        print(f"\nthe leaderboard's summary table ranks {count} baselines by test accuracy")
    figures.write()


if __name__ == "__main__":
    main()
