"""The MLflow store bench/scale.py runs the leaderboard over: one sweep of eight IDC baselines on a
real split, written through the harness's tracker (a module of its own, so the bench's data steps
import no MLflow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness import tracking
from harness.evaluation import Evaluation
from harness.metrics import classification_metrics, confusion

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
CLASSES = ("non_idc", "idc")


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
