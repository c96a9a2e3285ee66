"""Read sweeps back from MLflow: trial runs, the winners' fold and ensemble runs, their predictions.

Only the tracking store is read, never files a sweep wrote on the side, so a leaderboard can be
rebuilt from a remote server. Runs are compared only when they saw the same split (equal
`split_hash` tag); runs of another split are counted in a note, never mixed in.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException

from harness import tracking
from harness.environment import environment
from harness.errors import InputError
from harness.metrics import ranking_key

RunType = tracking.RunType


@dataclass
class BaselineRuns:
    """Everything tracked for one baseline of one experiment on the compared split."""

    label: str
    baseline: str
    experiment: str
    dataset: str
    protocol: str
    roi_source: str
    floor: bool
    # The protocol options the trials logged as params (RunSpec.protocol_params): `semantics` is
    # "source" or "torch", None for runs made before the option existed.
    semantics: str | None
    bn_recalibration: bool
    trials: pd.DataFrame
    best: pd.Series | None
    folds: pd.DataFrame
    ensemble: pd.Series | None

    def metric(self, name: str) -> float:
        """Return metric `name` of the best trial, NaN when there is none."""
        if self.best is None or name not in self.best or pd.isna(self.best[name]):
            return math.nan
        return float(self.best[name])

    def param_count(self, convention: str) -> float:
        """Return the best trial's parameter count in `convention` (torch, keras, weights_only), NaN
        when it has none (a tag; stores written before it was one hold it as a metric)."""
        return self.metric(tracking.PARAM_COUNT_PREFIX + convention.replace("-", "_"))

    def fold_metric(self, name: str) -> list[float]:
        """Return metric `name` of each retrained fold model, in fold order."""
        if self.folds.empty or name not in self.folds:
            return []
        return [float(v) for v in self.folds[name] if not pd.isna(v)]

    @property
    def short_retrain(self) -> int | None:
        """Return the epoch budget of the retrained folds when it was below the best trial's
        (`search.retrain_epochs`), else None."""
        if self.best is None or self.folds.empty or "epochs" not in self.folds:
            return None
        budget = int(self.folds.epochs.max())
        return budget if 0 < budget < int(self.best.get("epochs", -1)) else None

    def hours(self, share: str) -> float:
        """Return the device-hours of every trial and fold run: wall time x granted CPU or GPU share."""
        frames = [f for f in (self.trials, self.folds) if not f.empty and share in f]
        return float(sum((f.wall_time_s * f[share].fillna(0)).sum() for f in frames) / 3600)


@dataclass
class RunSet:
    """The compared runs of one or more MLflow experiments on one split, and what was left out."""

    tracking_uri: str
    experiments: list[str]
    split_hash: str
    baselines: list[BaselineRuns]
    notes: list[str] = field(default_factory=list)
    _downloads: tempfile.TemporaryDirectory = field(default_factory=tempfile.TemporaryDirectory, repr=False)
    _frames: dict[tuple[str, str], pd.DataFrame | None] = field(default_factory=dict, repr=False)
    _classes: dict[str, list[str]] = field(default_factory=dict, repr=False)  # per run: read once

    def artifact(self, run_id: str, path: str) -> Path | None:
        """Return a local copy of artifact `path` of a run, or None when the run has none."""
        target = Path(self._downloads.name) / run_id
        # One bar per small file would bury the tables.
        no_bars = {MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name: "false"}
        try:
            with environment(no_bars, override=True):
                return Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=run_id, artifact_path=path, dst_path=str(target), tracking_uri=self.tracking_uri
                    )
                )
        except (MlflowException, OSError):
            return None

    def predictions(self, run_id: str, part: str) -> pd.DataFrame | None:
        """Return the per-image predictions a run logged for `part` (test or val), None if absent."""
        key = (run_id, part)
        if key not in self._frames:
            local = self.artifact(run_id, f"{part}/predictions.csv")
            self._frames[key] = pd.read_csv(local) if local is not None else None
        return self._frames[key]

    def test_predictions(self, runs: BaselineRuns, model: str) -> pd.DataFrame | None:
        """Return the test predictions of the fold `ensemble` or of the `best_trial`'s model."""
        run = runs.ensemble if model == "ensemble" else runs.best
        return None if run is None else self.predictions(run.run_id, "test")

    def class_names(self, runs: BaselineRuns) -> list[str]:
        """Return the class names a baseline's test evaluation logged, in class-index order."""
        run = runs.ensemble if runs.ensemble is not None else runs.best
        return self.run_class_names(run.run_id) if run is not None else []

    def run_class_names(self, run_id: str) -> list[str]:
        """Return the class names a run's test evaluation logged, in class-index order (none if it logged none)."""
        if run_id not in self._classes:
            local = self.artifact(run_id, "test/confusion_matrix.json")
            self._classes[run_id] = json.loads(local.read_text())["classes"] if local is not None else []
        return self._classes[run_id]

    def pooled_val_predictions(self, runs: BaselineRuns) -> tuple[pd.DataFrame | None, str]:
        """Return out-of-fold validation predictions pooled over the retrained folds (each image
        scored once, by the model that did not train on it), else the best trial's search fold,
        with a note saying which."""
        frames = [self.predictions(r, "val") for r in runs.folds.run_id] if not runs.folds.empty else []
        if frames and all(f is not None for f in frames):
            return pd.concat(frames, ignore_index=True), f"pooled over {len(frames)} folds"
        if runs.best is not None:
            frame = self.predictions(runs.best.run_id, "val")
            if frame is not None:
                return frame, "search fold only (no fold retrain)"
        return None, "no validation predictions logged"


def _all_runs(client: MlflowClient, experiment_id: str) -> list:
    runs: list = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _frame(runs: list) -> pd.DataFrame:
    rows = []
    for run in runs:
        info, tags, params = run.info, run.data.tags, run.data.params
        end = info.end_time or info.start_time
        rows.append(
            {
                "run_id": info.run_id,
                "status": info.status,
                "start_time": info.start_time,
                "run_type": tags.get(tracking.RUN_TYPE),
                "parent": tags.get(tracking.PARENT),
                "baseline": tags.get(tracking.BASELINE),
                "split_hash": tags.get(tracking.SPLIT_HASH),
                "dataset": tags.get(tracking.DATASET, "unknown"),
                "protocol": tags.get(tracking.PROTOCOL, "unknown"),
                "roi_source": tags.get(tracking.ROI_SOURCE, "none"),
                "floor": tags.get(tracking.FLOOR) == "true",
                "orphaned": tags.get(tracking.ORPHANED) == "true",
                # An encoder probe's preset (issue 28's baselines): what eva's published rows match on.
                "encoder": params.get("encoder", ""),
                # Its weights file's digest: absent when the encoder was random-initialised.
                "encoder_sha256": params.get("encoder_sha256", ""),
                "semantics": params.get("semantics", ""),
                "bn_recalibration": params.get("bn_recalibration", "false"),
                "epochs": int(params["epochs"]) if params.get("epochs", "").isdigit() else -1,
                "objective_metric": tags.get(tracking.OBJECTIVE, "val_accuracy"),
                "stopped_by": tags.get(tracking.STOPPED_BY),
                "trial_id": tags.get(tracking.TRIAL_ID, info.run_id),
                "fold": int(tags[tracking.FOLD]) if tags.get(tracking.FOLD, "").isdigit() else -1,
                "cpu_share": float(tags.get(tracking.CPU_SHARE, "nan")),
                "gpu_share": float(tags.get(tracking.GPU_SHARE, "nan")),
                "wall_time_s": (end - info.start_time) / 1000,
                **_param_counts(tags),
                **current_metric_names(run.data.metrics),
            }
        )
    return pd.DataFrame(rows)


def _param_counts(tags: dict[str, str]) -> dict[str, float]:
    """Return a run's parameter-count tags as numbers, under their tag names."""
    prefix = tracking.PARAM_COUNT_PREFIX
    return {k: float(v) for k, v in tags.items() if k.startswith(prefix) and v.isdigit()}


def current_metric_names(metrics: dict[str, float]) -> dict[str, float]:
    """Return a run's metrics under today's names: stores written before the rename call the
    selected epoch's metrics best_val_* and the epoch best_epoch."""
    renamed: dict[str, float] = {}
    for name, value in metrics.items():
        if name.startswith("best_val_"):
            name = "sel_val_" + name.removeprefix("best_val_")
        elif name == "best_epoch":
            name = "selected_epoch"
        renamed.setdefault(name, value)
    return renamed


def _experiment_runs(client: MlflowClient, tracking_uri: str, experiment: str) -> pd.DataFrame:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise InputError(f"experiment {experiment!r} has no runs in {tracking_uri} (run `harness sweep` first)")
    frame = _frame(_all_runs(client, found.experiment_id))
    return frame.assign(experiment=experiment) if not frame.empty else frame


def latest_split_hash(tracking_uri: str, experiment: str) -> str:
    """Return the split hash of the most recent sweep of `experiment`."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    sweeps = (
        []
        if found is None
        else client.search_runs(
            [found.experiment_id],
            f"tags.{tracking.RUN_TYPE} = '{RunType.SWEEP}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    if not sweeps:
        raise InputError(f"experiment {experiment!r} has no sweep in {tracking_uri} (run `harness sweep` first)")
    return sweeps[0].data.tags[tracking.SPLIT_HASH]


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """Return the trial with the best objective among those that reached a test evaluation, with
    the tie-break the sweep's fold retrain uses."""
    if "test_accuracy" not in trials:
        return None
    tested = trials[trials.test_accuracy.notna()]
    if tested.empty:
        return None
    minimise = tested.objective_metric.iloc[0] == "val_loss"
    best = min(
        tested.index,
        key=lambda i: ranking_key(tested.objective[i], tested.sel_val_loss[i], tested.trial_id[i], minimise=minimise),
    )
    return tested.loc[best]


def _baseline_runs(label: str, trials: pd.DataFrame, others: pd.DataFrame) -> BaselineRuns:
    best = best_trial(trials)
    children = others[others.parent == best.run_id] if best is not None and not others.empty else others.iloc[0:0]
    finished = children.status == tracking.FINISHED
    folds = children[(children.run_type == RunType.FOLD) & finished].sort_values("fold")
    ensembles = children[(children.run_type == RunType.ENSEMBLE) & finished]
    first = trials.iloc[0]
    return BaselineRuns(
        label=label,
        baseline=first.baseline,
        experiment=first.experiment,
        dataset=first.dataset,
        protocol=first.protocol,
        roi_source=first.roi_source,
        floor=bool(first.floor),
        semantics=first.semantics or None,
        bn_recalibration=first.bn_recalibration == "true",
        trials=trials,
        best=best,
        folds=folds.reset_index(drop=True),
        ensemble=ensembles.iloc[-1] if not ensembles.empty else None,
    )


def _on_split(runs: pd.DataFrame, experiments: list[str], split_hash: str, uri: str) -> tuple[pd.DataFrame, list[str]]:
    """Return the trial (and floor) runs made on `split_hash`, and a note on those left out."""
    # A floor's run stands where a baseline's trials stand: one per floor, with the same metrics. A
    # run its dead driver left RUNNING (orphaned) was never a whole trial.
    names = ", ".join(map(repr, experiments))
    trials = runs if runs.empty else runs[runs.run_type.isin([RunType.TRIAL, RunType.FLOOR]) & ~runs.orphaned]
    if trials.empty:
        raise InputError(f"experiment {names} has no trial runs in {uri}")
    notes = []
    other = trials[trials.split_hash != split_hash]
    if not other.empty:
        hashes = ", ".join(sorted(h[:12] for h in other.split_hash.dropna().unique()))
        notes.append(
            f"excluded {len(other)} runs made on another split ({hashes}); only split {split_hash[:12]} is compared"
        )
    trials = trials[trials.split_hash == split_hash]
    if trials.empty:
        raise InputError(f"experiment {names} has no trial runs on split {split_hash[:12]}")
    return trials, notes


def _group_label(experiment: str, baseline: str, semantics: str, bn: str, *, several: bool, variants: int) -> str:
    """Return a row's label: the baseline, its experiment when several are compared, and its
    protocol options when the same baseline trained under several."""
    label = f"{baseline} ({experiment})" if several else baseline
    if variants > 1:
        label += f" [{semantics or 'pre-semantics'} semantics{', BN recal.' if bn == 'true' else ''}]"
    return label


def _grouped(trials: pd.DataFrame, others: pd.DataFrame) -> tuple[list[BaselineRuns], list[str]]:
    """Return one BaselineRuns per experiment, baseline and protocol variant, and notes on those
    without a test evaluation."""
    several = trials.experiment.nunique() > 1
    # Trials trained under other protocol options are other models: each variant is a row of its own.
    keys = ["experiment", "baseline", "semantics", "bn_recalibration"]
    variants = trials.drop_duplicates(keys).groupby(["experiment", "baseline"]).size()
    baselines, notes = [], []
    for (experiment, baseline, semantics, bn), group in trials.groupby(keys, sort=True):
        experiment, baseline = str(experiment), str(baseline)
        label = _group_label(
            experiment, baseline, str(semantics), str(bn), several=several, variants=int(variants[experiment, baseline])
        )
        label += " (floor)" if group.floor.iloc[0] else ""
        entry = _baseline_runs(label, group.reset_index(drop=True), others)
        baselines.append(entry)
        if entry.best is None:
            notes.append(
                f"{label}: no test evaluation (the split has no test set)"
                if entry.floor
                else f"{label}: no trial reached a test evaluation (all stopped early or failed, "
                "or the split has no test set)"
            )
    return baselines, notes


def collect_runs(tracking_uri: str, experiments: list[str], *, split_hash: str | None = None) -> RunSet:
    """Return the runs of `experiments` on one split (default: that of the first one's latest sweep)."""
    if not experiments:
        raise InputError("name at least one experiment (an experiment file or --experiment NAME)")
    client = MlflowClient(tracking_uri)
    frames = [f for f in (_experiment_runs(client, tracking_uri, name) for name in experiments) if not f.empty]
    split_hash = split_hash or latest_split_hash(tracking_uri, experiments[0])
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    trials, notes = _on_split(runs, experiments, split_hash, tracking_uri)
    others = runs[(runs.run_type.isin([RunType.FOLD, RunType.ENSEMBLE])) & (runs.split_hash == split_hash)]
    baselines, more = _grouped(trials, others)
    return RunSet(
        tracking_uri=tracking_uri,
        experiments=list(experiments),
        split_hash=split_hash,
        baselines=baselines,
        notes=notes + more,
    )
