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
from PIL import Image

from harness import tracking
from harness.data.idc import PUBLISHED_TOTALS
from harness.data.synthetic import synthetic_patch
from harness.evaluation import Evaluation
from harness.metrics import classification_metrics, confusion

HARNESS = [sys.executable, "-m", "harness"]
EXPERIMENT = "scale-idc"
BASELINES = (
    "cancernet",
    "idc_cnn",
    "resnet18",
    "vgg16",
    "densenet121",
    "densenet161",
    "densenet169",
    "efficientnetv2_s",
)
FOLDS = 5
POOL = 200  # distinct patches per class
EDGE_SHARE = 0.02
CLASSES = ("non_idc", "idc")


def _pool(folder: Path, rng: np.random.Generator) -> dict[int, list[Path]]:
    """Write the distinct patches each class's files link to; returns them per label."""
    folder.mkdir(parents=True)
    pool: dict[int, list[Path]] = {}
    for label in (0, 1):
        pool[label] = []
        for i in range(POOL):
            pixels = synthetic_patch(rng, label, rng.normal(0, 3, 3))
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


def _predictions(rows: pd.DataFrame, rng: np.random.Generator, skill: float) -> Evaluation:
    """Return an evaluation whose probabilities lean towards each row's label by `skill`."""
    labels = rows.label.to_numpy()
    logits = rng.normal(size=(len(labels), 2)).astype(np.float32)
    logits[np.arange(len(labels)), labels] += skill
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    frame = pd.DataFrame({"rel_path": rows.rel_path.to_numpy(), "patient_id": rows.patient_id.to_numpy()})
    frame = frame.assign(label=labels, prob_0=probs[:, 0], prob_1=probs[:, 1], pred=probs.argmax(1))
    return Evaluation(classification_metrics(labels, probs), confusion(labels, probs.argmax(1), 2), frame)


class StoreWriter:
    """Writes a sweep's runs on one split through the harness's tracker."""

    def __init__(self, uri: str, split_hash: str) -> None:
        self.tracker = tracking.Tracker(uri)
        self.experiment = self.tracker.experiment_id(EXPERIMENT)
        self.tags = {tracking.DATASET: "idc", tracking.SPLIT_HASH: split_hash, tracking.PROTOCOL: "patient"}
        self.tags |= {tracking.ROI_SOURCE: "none", tracking.CPU_SHARE: "1", tracking.GPU_SHARE: "0.25"}

    def run(self, run_type: str, baseline: str, metrics: dict, *, parent: str | None, extra: dict | None = None) -> str:
        """Write one run of `run_type` with `metrics` (a trial's lr among them); returns its id."""
        params = {"semantics": "source", "bn_recalibration": "false"}
        if "lr" in metrics:
            params["lr"] = metrics.pop("lr")
        run_id = self.tracker.start_run(
            self.experiment,
            name=f"{baseline} {run_type}",
            run_type=tracking.RunType(run_type),
            tags={**self.tags, tracking.BASELINE: baseline, **(extra or {})},
            params=params if run_type != "sweep" else {},
            parent=parent,
        )
        self.tracker.log_metrics(run_id, metrics, step=1)
        return run_id

    def evaluated(self, run_id: str, parts: dict[str, Evaluation]) -> None:
        """Log each part's evaluation (predictions, confusion) and end the run FINISHED."""
        for part, evaluation in parts.items():
            self.tracker.log_evaluation(run_id, part, evaluation, CLASSES)
        self.tracker.finish(run_id, tracking.FINISHED)


def _trial(store: StoreWriter, baseline: str, number: int, sweep: str, rng: np.random.Generator) -> None:
    """Write one trial: two in three stopped early by ASHA, the others tested (metrics only: the
    leaderboard reads the predictions of each baseline's best trial alone)."""
    objective = float(rng.uniform(0.6, 0.85))
    metrics = {"objective": objective, "sel_val_accuracy": objective, "sel_val_loss": 1 - objective}
    stopped = number % 3 != 0
    if not stopped:
        metrics |= {"test_accuracy": objective - 0.05, "test_auc": objective}
    extra = {tracking.TRIAL_ID: f"{baseline}-{number}"}
    run_id = store.run("trial", baseline, {**metrics, "lr": 10 ** rng.uniform(-5, -2)}, parent=sweep, extra=extra)
    store.tracker.finish(run_id, tracking.FINISHED, {tracking.STOPPED_BY: tracking.STOPPED_BY_ASHA} if stopped else {})


def _winner(store: StoreWriter, baseline: str, sweep: str, parts: dict, rng: np.random.Generator, skill: float):
    """Write a baseline's best trial, its retrained folds and their ensemble; returns nothing."""
    test = _predictions(parts["test"], rng, skill)
    metrics = {"objective": 0.9, "sel_val_accuracy": 0.9, "test_accuracy": test.metrics["accuracy"]}
    winner = store.run("trial", baseline, metrics, parent=sweep, extra={tracking.TRIAL_ID: f"{baseline}-win"})
    store.evaluated(winner, {"test": test})
    for fold, rows in enumerate(parts["val"]):
        evaluations = {"val": _predictions(rows, rng, skill), "test": _predictions(parts["test"], rng, skill)}
        metrics = {"sel_val_accuracy": evaluations["val"].metrics["accuracy"]}
        metrics["test_accuracy"] = evaluations["test"].metrics["accuracy"]
        run_id = store.run("fold", baseline, metrics, parent=winner, extra={tracking.FOLD: str(fold)})
        store.evaluated(run_id, evaluations)
    ensemble = _predictions(parts["test"], rng, skill + 0.2)
    run_id = store.run("ensemble", baseline, {"test_accuracy": ensemble.metrics["accuracy"]}, parent=winner)
    store.evaluated(run_id, {"test": ensemble})


def write_store(uri: str, manifest: pd.DataFrame, split_path: Path, runs: int) -> int:
    """Write a sweep of about `runs` runs on the split at `split_path`; returns the count."""
    from harness.data.splits import TEST, read_split

    split = read_split(split_path)
    store, rng = StoreWriter(uri, split.hash), np.random.default_rng(1)
    parts = {
        "test": manifest.iloc[split.rows(split=TEST)],
        "val": [manifest.iloc[split.rows(split="cv", fold=f)] for f in range(split.folds)],
    }
    sweep = store.run("sweep", "", {}, parent=None)
    trials = max(2, (runs - 1) // len(BASELINES) - split.folds - 2)
    for b, baseline in enumerate(BASELINES):
        for number in range(trials):
            _trial(store, baseline, number, sweep, rng)
        _winner(store, baseline, sweep, parts, rng, skill=1.0 + b / 4)
    store.tracker.finish(sweep, tracking.FINISHED)
    return 1 + len(BASELINES) * (trials + 1 + split.folds + 1)


def _row(name: str, seconds: float, rss: float | None, note: str = "") -> None:
    rss_text = f"{rss:.2f}" if rss is not None else "-"
    print(f"| {name} | {seconds:,.1f} | {rss_text} | {note} |", flush=True)


def main() -> None:
    """Print wall time and peak RSS of each step at the release's size, and of the leaderboard."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1%% of the patches, 30 patients, a 60-run store")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--step", choices=("split", "cache"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return step(args.step, args.work)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # the store's creation notes
    fraction, patients, runs = (0.01, 30, 60) if args.smoke else (1.0, PUBLISHED_TOTALS["patients"], 5000)
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        started = time.perf_counter()
        patches = write_release_tree(work / "idc", fraction, patients)
        print(f"{patches:,} patches of the release's layout written in {time.perf_counter() - started:.1f} s")
        print("\n| step | wall s | peak RSS GB | |\n|---|---:|---:|---|")
        index = [*HARNESS, "data", "index", "--root", str(work / "idc"), "--out", str(work / "manifest.parquet")]
        total = [measured(index + (["--allow-subset"] if args.smoke else []))]
        _row("index", *total[-1])
        for name in ("split", "cache"):
            total.append(measured([sys.executable, __file__, "--step", name, "--work", str(work)]))
            _row(name, *total[-1])
        _row("index + split + cache", sum(s for s, _ in total), max(r for _, r in total), "target < 300 s, < 2.5 GB")
        from harness.data.manifest import read_manifest

        manifest, _ = read_manifest(work / "manifest.parquet")
        uri = f"sqlite:///{work / 'mlflow.db'}"
        started = time.perf_counter()
        written = write_store(uri, manifest, next((work / "splits").glob("split-*.parquet")), runs)
        _row(f"writing a store of {written:,} runs", time.perf_counter() - started, None, "not a target")
        board = [*HARNESS, "leaderboard", EXPERIMENT, "--tracking-uri", uri, "--output-dir", str(work / "results")]
        _row(f"harness leaderboard over {written:,} runs", *measured(board), "target < 60 s")
        [summary] = (work / "results").rglob("summary.csv")
        ranked = pd.read_csv(summary).query("row_kind == 'harness' and test_accuracy.notna()")
        print(f"\nthe leaderboard's summary table ranks {len(ranked)} baselines by test accuracy")


if __name__ == "__main__":
    main()
