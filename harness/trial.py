"""What runs inside one Ray trial, and the driver-side callback that closes its MLflow run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from harness import tracking
from harness.config import split_point
from harness.search import DONE_KEY
from harness.train import EpochReport, RunSpec, fit

@dataclass(frozen=True)
class BaselinePlan:
    """A baseline's part of a sweep: its pinned hyperparameters and optional local weights."""

    fixed: dict[str, Any]
    pretrained: Path | None


@dataclass(frozen=True)
class SweepContext:
    """Everything a trial needs from the driver; every path in it is absolute."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    objective: str
    tags: dict[str, str]
    plans: dict[str, BaselinePlan]
    manifest_path: Path
    split_path: Path
    cache_path: Path
    mask_cache_path: Path | None
    class_names: tuple[str, ...]
    fold: int
    max_epochs: int
    patience: int
    seed: int
    device: str
    threads: int
    eval_batch_size: int


def run_trial(config: dict[str, Any], *, ctx: SweepContext) -> None:
    """Train one sampled configuration, logging to its own MLflow child run and reporting to Tune."""
    baseline = config["baseline"]
    plan = ctx.plans[baseline]
    point = {**plan.fixed, **{k: v for k, v in config.items() if k != "baseline"}}
    params, model_kwargs = split_point(point)
    spec = RunSpec(
        baseline=baseline, num_classes=len(ctx.class_names), pretrained=plan.pretrained, params=params,
        model_kwargs=model_kwargs, manifest_path=ctx.manifest_path, cache_path=ctx.cache_path,
        mask_cache_path=ctx.mask_cache_path, split_path=ctx.split_path, fold=ctx.fold, max_epochs=ctx.max_epochs, patience=ctx.patience,
        seed=ctx.seed, device=ctx.device, threads=ctx.threads, eval_batch_size=ctx.eval_batch_size,
    )
    trial_id = tune.get_context().get_trial_id()
    tracker = tracking.Tracker(ctx.tracking_uri)
    run_id = tracker.start_run(
        ctx.experiment_id,
        name=f"{baseline}-{trial_id}",
        parent=ctx.parent_run_id,
        tags={
            **ctx.tags,
            tracking.RUN_TYPE: "trial",
            tracking.BASELINE: baseline,
            tracking.TRIAL_ID: trial_id,
            tracking.FOLD: str(ctx.fold),
            tracking.PRETRAINED: str(plan.pretrained) if plan.pretrained else "none",
            tracking.OBJECTIVE: ctx.objective,
        },
        params={**point, "epochs": spec.epochs},
    )

    def report(entry: EpochReport) -> None:
        metrics = tracking.log_epoch(tracker, run_id, entry, objective=ctx.objective, class_names=ctx.class_names)
        # Everything is logged before this report: once ASHA answers STOP, nothing after it runs.
        tune.report({**metrics, DONE_KEY: float(entry.done)})

    fit(spec, report)


class CloseTrialRuns(tune.Callback):
    """Ends each trial's MLflow run from the driver: FINISHED, KILLED by ASHA, or FAILED with the error."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, tags: dict[str, str]) -> None:
        self._tracking_uri = tracking_uri
        self._experiment_id = experiment_id
        self._parent = parent_run_id
        self._tags = tags

    def _tracker(self) -> tracking.Tracker:
        return tracking.Tracker(self._tracking_uri)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tracker = self._tracker()
        run_id = tracker.find_trial_run(self._experiment_id, self._parent, trial.trial_id)
        if run_id is None:
            return
        last = trial.last_result or {}
        if last.get(DONE_KEY):
            tracker.finish(run_id, tracking.FINISHED)
        else:
            epoch = str(last.get("training_iteration", 0))
            tracker.finish(run_id, tracking.KILLED, {tracking.STOPPED_BY: "asha", "stopped_at_epoch": epoch})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tracker = self._tracker()
        run_id = tracker.find_trial_run(self._experiment_id, self._parent, trial.trial_id)
        if run_id is None:
            # The trial died before it could open its run: record the failure all the same.
            run_id = tracker.start_run(
                self._experiment_id, name=f"{trial.config.get('baseline')}-{trial.trial_id}", parent=self._parent,
                tags={**self._tags, tracking.RUN_TYPE: "trial", tracking.BASELINE: str(trial.config.get("baseline")),
                      tracking.TRIAL_ID: trial.trial_id},
                params={},
            )
        error = trial.get_error() or "unknown error"
        tracker.finish(run_id, tracking.FAILED, {tracking.ERROR: str(error)[-4000:]})
