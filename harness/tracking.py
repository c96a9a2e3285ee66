"""MLflow tracking: a parent run per sweep, a child run per trial, per-epoch metrics, artifacts, tags.

A small tracker of our own instead of Ray's MLflowLoggerCallback or Optuna's MLflowCallback
(NOTES-ray-optuna-mlflow.md): runs are created by id and nested with the `mlflow.parentRunId`
tag, one `log_batch` per epoch, retries when SQLite is locked by a parallel writer.
"""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from harness.metrics import METRIC_NAMES
from harness.train import EpochReport, Evaluation, MapGallery

T = TypeVar("T")

# Tag names shared by the sweep (writer) and the leaderboard (reader).
PARENT = "mlflow.parentRunId"
RUN_TYPE = "run_type"  # sweep | trial | floor | fold | ensemble | train
BASELINE = "baseline"
DATASET = "dataset"
SPLIT_HASH = "split_hash"
MANIFEST_HASH = "manifest_hash"
TRIAL_ID = "ray_trial_id"
OPTUNA_TRIAL = "optuna_trial_number"  # the trial's number in its baseline's Optuna study
STOPPED_BY = "stopped_by"
# What a `stopped_by` tag names: ASHA, or synchronous halving in a reproducible sweep, both stopping
# trials by design (a trial the killed driver lost is tagged otherwise, and is no early stop).
STOPPED_BY_ASHA, STOPPED_BY_HALVING = "asha", "halving"
EARLY_STOPPERS = (STOPPED_BY_ASHA, STOPPED_BY_HALVING)
ERROR = "error"
PRETRAINED = "pretrained"
PROTOCOL = "protocol"
# `protocol` values of the leakage study's two arms: patch-level folds (the seeds') and patient folds.
PATCH_RANDOM, PATIENT = "patch_random", "patient"
FOLD = "fold"
OBJECTIVE = "objective_metric"
ROI_SOURCE = "roi_source"  # none | files | tissue
NODE_ID = "ray_node_id"  # the node of the latest attempt
NODE_IP = "ray_node_ip"
NODE_IDS = "ray_node_ids"  # every attempt's node, in order
ATTEMPTS = "attempts"
RETRIES = "retries"
WINNER = "winner_trial_id"
FLOOR = "floor"  # "true" on the runs of a floor model (majority, colour_forest)
CPU_SHARE = "resources_cpu"  # what Ray granted one trial or fold task: GPU-hours = wall time x share
GPU_SHARE = "resources_gpu"

FINISHED = RunStatus.to_string(RunStatus.FINISHED)
KILLED = RunStatus.to_string(RunStatus.KILLED)
FAILED = RunStatus.to_string(RunStatus.FAILED)


def _retry(call: Callable[[], T], attempts: int = 8) -> T:
    """Run an MLflow call, retrying with backoff while SQLite reports a lock from another writer."""
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def git_commit(directory: Path | None = None) -> str:
    """Return the checked-out commit of `directory` (default: the working directory at the call),
    suffixed `-dirty` with local changes, or 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def environment_tags() -> dict[str, str]:
    """Return the versions and host that explain a run's numbers."""
    import ray
    import timm
    import torch

    return {
        "env.python": platform.python_version(),
        "env.torch": torch.__version__,
        "env.timm": timm.__version__,
        "env.ray": ray.__version__,
        "env.host": platform.node(),
        "env.cuda": torch.version.cuda or "none",
    }


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Return an absolute artifact folder beside a SQLite store; a server chooses its own (None)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.parent / "mlartifacts" / experiment).resolve().as_uri()


class Tracker:
    """Thin, retrying wrapper over MlflowClient with the harness's run hierarchy."""

    def __init__(self, tracking_uri: str) -> None:
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)

    def experiment_id(self, name: str, *, create: bool = True) -> str | None:
        """Return the id of experiment `name`, creating it (artifacts at an absolute path) if asked."""
        found = _retry(lambda: self.client.get_experiment_by_name(name))
        if found is not None:
            return found.experiment_id
        if not create:
            return None
        location = default_artifact_location(self.uri, name)
        try:
            return _retry(lambda: self.client.create_experiment(name, artifact_location=location))
        except MlflowException:
            # Another process created it between our lookup and our create.
            return _retry(lambda: self.client.get_experiment_by_name(name)).experiment_id

    def start_run(
        self, experiment_id: str, *, name: str, tags: dict[str, str], params: dict[str, Any], parent: str | None = None
    ) -> str:
        """Create a RUNNING run (nested under `parent` if given) with tags and params; returns its id."""
        tags = {**tags, **({PARENT: parent} if parent else {})}
        run = _retry(lambda: self.client.create_run(experiment_id, tags=tags, run_name=name))
        run_id = run.info.run_id
        if params:
            batch = [Param(k, str(v)) for k, v in sorted(params.items())]
            _retry(lambda: self.client.log_batch(run_id, params=batch))
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], *, step: int) -> None:
        """Log all `metrics` at `step` in one batch."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
        _retry(lambda: self.client.log_batch(run_id, metrics=batch))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set `tags` on a run in one batch."""
        batch = [RunTag(k, str(v)) for k, v in sorted(tags.items())]
        _retry(lambda: self.client.log_batch(run_id, tags=batch))

    def finish(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        """Tag and end a run as FINISHED, KILLED or FAILED."""
        if tags:
            self.set_tags(run_id, tags)
        _retry(lambda: self.client.set_terminated(run_id, status=status))

    @contextmanager
    def ending(self, run_id: str) -> Iterator[None]:
        """End `run_id` FINISHED after the block, or FAILED with the error if the block raises."""
        try:
            yield
        except BaseException as exc:
            self.finish(run_id, FAILED, {ERROR: repr(exc)[-4000:]})
            raise
        self.finish(run_id, FINISHED)

    def reopen(self, run_id: str) -> None:
        """Set a run back to RUNNING (a resumed sweep continues in its old parent run)."""
        _retry(lambda: self.client.update_run(run_id, status="RUNNING"))

    def record_attempt(self, run_id: str, node_id: str, node_ip: str) -> None:
        """Count one more attempt of a run on node `node_id` and mark it RUNNING."""
        tags = _retry(lambda: self.client.get_run(run_id)).data.tags
        nodes = [n for n in tags.get(NODE_IDS, "").split(",") if n] + [node_id]
        self.set_tags(
            run_id, {ATTEMPTS: str(len(nodes)), NODE_ID: node_id, NODE_IP: node_ip, NODE_IDS: ",".join(nodes)}
        )
        self.reopen(run_id)

    def child_runs(self, experiment_id: str, parent: str, run_type: str) -> list:
        """Return the runs of `run_type` nested directly under `parent`."""
        return _retry(
            lambda: self.client.search_runs(
                [experiment_id], filter_string=f"tags.`{PARENT}` = '{parent}' and tags.{RUN_TYPE} = '{run_type}'"
            )
        )

    def find_trial_run(self, experiment_id: str, parent: str, trial_id: str) -> str | None:
        """Return the run id of Ray trial `trial_id` under sweep run `parent`, if one was created."""
        runs = _retry(
            lambda: self.client.search_runs(
                [experiment_id], filter_string=f"tags.`{PARENT}` = '{parent}' and tags.{TRIAL_ID} = '{trial_id}'"
            )
        )
        return runs[0].info.run_id if runs else None

    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Upload one local file as an artifact of the run."""
        _retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def log_evaluation(self, run_id: str, prefix: str, evaluation: Evaluation, class_names: tuple[str, ...]) -> None:
        """Log a confusion matrix (JSON + PNG), per-image predictions (CSV) and the map galleries
        (PNG overlays of the best and worst predictions) under `prefix`/."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            matrix = evaluation.confusion
            (folder / "confusion_matrix.json").write_text(
                json.dumps({"classes": list(class_names), "rows_true_cols_pred": matrix.tolist()})
            )
            _confusion_png(matrix, class_names, folder / "confusion_matrix.png", title=f"{prefix} confusion matrix")
            evaluation.predictions.to_csv(folder / "predictions.csv", index=False)
            for name, gallery in evaluation.galleries.items():
                _gallery_png(
                    gallery, folder / f"maps_{name}.png", title=f"{prefix}: {name} predictions, {gallery.kind} maps"
                )
            for file in sorted(folder.iterdir()):
                self.log_file(run_id, file, prefix)


def epoch_metrics(report: EpochReport, objective: str) -> dict[str, float]:
    """Return the flat metrics of one epoch: train loss, val_*, best_val_*, best_epoch, objective."""
    metrics = {"train_loss": report.train_loss, "best_epoch": float(report.best_epoch)}
    for name in METRIC_NAMES:
        metrics[f"val_{name}"] = report.val[name]
        metrics[f"best_val_{name}"] = report.best_val[name]
    metrics["objective"] = report.best_val[objective.removeprefix("val_")]
    return metrics


def log_epoch(
    tracker: Tracker, run_id: str, report: EpochReport, *, objective: str, class_names: tuple[str, ...]
) -> dict[str, float]:
    """Log one epoch to a run, and on the last the best epoch's validation predictions and the
    test evaluation; returns the epoch's metrics."""
    metrics = epoch_metrics(report, objective)
    if report.epoch == 1:
        tracker.log_metrics(run_id, {f"params_{k}": v for k, v in report.param_counts.items()}, step=0)
    tracker.log_metrics(run_id, metrics, step=report.epoch)
    if report.best_val_evaluation is not None:
        localisation = {
            f"best_val_{k}": v for k, v in report.best_val_evaluation.metrics.items() if k.startswith("miou")
        }
        if localisation:
            tracker.log_metrics(run_id, localisation, step=report.best_epoch)
        tracker.log_evaluation(run_id, "val", report.best_val_evaluation, class_names)
    if report.test is not None:
        tracker.log_metrics(run_id, {f"test_{k}": v for k, v in report.test.metrics.items()}, step=report.best_epoch)
        tracker.log_evaluation(run_id, "test", report.test, class_names)
    return metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _gallery_png(gallery: MapGallery, path: Path, *, title: str) -> None:
    plt = _pyplot()
    count = len(gallery.images)
    fig, axes = plt.subplots(1, count, figsize=(2.4 * count, 2.9), dpi=110, squeeze=False)
    for ax, image, heat, caption in zip(axes[0], gallery.images, gallery.maps, gallery.captions):
        height, width = image.shape[:2]
        ax.imshow(image)
        # The map covers the whole image whatever its resolution; bilinear display, as BASELINES §4.3 scores it.
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1, extent=(0, width, height, 0), interpolation="bilinear")
        ax.set_title(caption, fontsize=6)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _confusion_png(matrix: np.ndarray, class_names: tuple[str, ...], path: Path, *, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
