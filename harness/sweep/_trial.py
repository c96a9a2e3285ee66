"""What runs inside one Ray trial, and the driver-side callback that closes its MLflow run."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from ray import tune

from harness import tracking
from harness.config import ExperimentConfig, ResourcesSpec, split_point
from harness.experiment import ExperimentSetup, log_epoch
from harness.train import EpochReport, FitResult, RunSpec, TrainState, fit

from ._keys import DONE_KEY, EPOCH_KEY
from ._nodes import NodeIdentity, check_manifest, current_node, localise, trial_device

CHECKPOINT_FILE = "trial.pt"
RunType = tracking.RunType


@dataclass(frozen=True)
class BaselinePlan:
    """A baseline's part of a sweep: pinned hyperparameters, optional local weights, and the
    resources one of its trials was granted."""

    fixed: dict[str, Any]
    pretrained: Path | None
    cpu: float
    gpu: float

    def resource_tags(self) -> dict[str, str]:
        """Return the run tags recording this plan's CPU and GPU share (the leaderboard's cost)."""
        return {tracking.CPU_SHARE: f"{self.cpu:g}", tracking.GPU_SHARE: f"{self.gpu:g}"}


@dataclass(frozen=True)
class SweepContext:
    """Everything a trial needs from the driver; every path in it is absolute, on the driver."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    objective: str
    tags: dict[str, str]
    plans: dict[str, BaselinePlan]
    data_dir: Path
    manifest_hash: str
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
    eval_batch_size: int
    semantics: str
    bn_recalibration: bool


def sweep_context(
    config: ExperimentConfig, setup: ExperimentSetup, parent: str, granted: dict[str, ResourcesSpec]
) -> SweepContext:
    """Return what every trial and fold task of the sweep under run `parent` needs from the driver."""
    data = setup.data
    pretrained = {b.name: b.pretrained for b in config.baselines}
    plans = {
        name: BaselinePlan(fixed=space.fixed, pretrained=pretrained[name], cpu=granted[name].cpu, gpu=granted[name].gpu)
        for name, space in config.baseline_spaces().items()
    }
    return SweepContext(
        tracking_uri=setup.tracker.uri,
        experiment_id=setup.experiment_id,
        parent_run_id=parent,
        objective=config.search.metric,
        tags=setup.tags,
        plans=plans,
        data_dir=(config.output_dir / "_data").resolve(),
        manifest_hash=data.manifest_hash,
        manifest_path=data.manifest_path,
        split_path=data.split_path,
        cache_path=data.cache_path,
        mask_cache_path=data.mask_cache_path,
        class_names=data.class_names,
        fold=config.protocol.search_fold,
        max_epochs=config.search.max_epochs,
        patience=config.training.patience,
        seed=config.protocol.seed,
        device=config.training.device,
        eval_batch_size=config.training.eval_batch_size,
        semantics=config.training.semantics,
        bn_recalibration=config.training.bn_recalibration,
    )


@dataclass
class TrialCheckpoint:
    """What a trial saves each epoch: its MLflow run, its training state, and what it reported."""

    run_id: str
    state: TrainState
    metrics: dict[str, float]


def node_spec(ctx: SweepContext, baseline: str, point: dict[str, Any], fold: int, node: NodeIdentity) -> RunSpec:
    """Return the RunSpec of `point` on `fold` with paths as this node sees them, after checking
    that the node's manifest is the driver's."""
    plan = ctx.plans[baseline]
    here = {
        name: localise(getattr(ctx, name), ctx.data_dir) if getattr(ctx, name) else None
        for name in ("manifest_path", "split_path", "cache_path", "mask_cache_path")
    }
    check_manifest(here["manifest_path"], ctx.manifest_hash, node)
    params, model_kwargs = split_point({**plan.fixed, **point})
    return RunSpec(
        baseline=baseline,
        num_classes=len(ctx.class_names),
        pretrained=plan.pretrained,
        params=params,
        model_kwargs=model_kwargs,
        **here,
        fold=fold,
        max_epochs=ctx.max_epochs,
        patience=ctx.patience,
        seed=ctx.seed,
        device=trial_device(ctx.device),
        threads=max(1, int(plan.cpu)),
        eval_batch_size=ctx.eval_batch_size,
        semantics=ctx.semantics,
        bn_recalibration=ctx.bn_recalibration,
    )


def fit_on_node(
    spec: RunSpec, gpu: float, report: Callable[[EpochReport], None], resume: TrainState | None = None
) -> FitResult:
    """Run `fit`, turning CUDA running out of memory into an error that names the batch and GPU share."""
    try:
        return fit(spec, report, resume)
    except torch.cuda.OutOfMemoryError as exc:
        raise RuntimeError(
            f"CUDA out of memory training {spec.baseline} at batch_size {spec.params.batch_size} with a "
            f"{gpu:g} GPU share (memory is shared between the trials on a GPU): lower the batch size "
            "or raise the baseline's resources.gpu"
        ) from exc


def _saved() -> TrialCheckpoint | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=False)


def _start_trial_run(tracker: tracking.Tracker, ctx: SweepContext, spec: RunSpec, point: dict, trial_id: str) -> str:
    """Open the MLflow run of a trial that has none yet; returns its id. The driver's
    CloseTrialRuns ends it: a trial the scheduler stops never runs again to end its own run."""
    plan = ctx.plans[spec.baseline]
    return tracker.start_run(
        ctx.experiment_id,
        name=f"{spec.baseline}-{trial_id}",
        run_type=RunType.TRIAL,
        parent=ctx.parent_run_id,
        tags={
            **ctx.tags,
            tracking.BASELINE: spec.baseline,
            tracking.TRIAL_ID: trial_id,
            tracking.FOLD: str(ctx.fold),
            tracking.PRETRAINED: str(spec.pretrained or "none"),
            tracking.OBJECTIVE: ctx.objective,
            **plan.resource_tags(),
        },
        params={**plan.fixed, **point, "epochs": spec.epochs, **spec.protocol_params},
    )


def _reporter(tracker: tracking.Tracker, ctx: SweepContext, run_id: str) -> Callable[[EpochReport], None]:
    """Return the epoch callback of a trial: log to its run, then checkpoint and report to Tune."""

    def report(entry: EpochReport) -> None:
        metrics = log_epoch(tracker, run_id, entry, objective=ctx.objective, class_names=ctx.class_names)
        result = {**metrics, DONE_KEY: float(entry.done), EPOCH_KEY: entry.epoch}
        # Everything is logged before this report: once ASHA answers STOP, nothing after it runs.
        with tempfile.TemporaryDirectory() as folder:
            torch.save(TrialCheckpoint(run_id, entry.snapshot(), result), Path(folder) / CHECKPOINT_FILE)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))

    return report


def run_trial(config: dict[str, Any], *, ctx: SweepContext) -> None:
    """Train one sampled configuration, logging to its own MLflow child run and reporting to Tune.

    A trial restored after a failure or a resumed sweep continues from its last epoch checkpoint
    in the MLflow run it opened first, so no trial ever has two runs.
    """
    # Ray logs a line per saved checkpoint, i.e. per epoch of every trial.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    point = {k: v for k, v in config.items() if k != "baseline"}
    node = current_node()
    trial_id = tune.get_context().get_trial_id()
    tracker = tracking.tracker_for(ctx.tracking_uri)
    saved = _saved()
    if saved and saved.metrics.get(DONE_KEY):
        # The trial had finished when the driver died; Tune only has to hear its last result again.
        tune.report(saved.metrics)
        return
    spec = node_spec(ctx, config["baseline"], point, ctx.fold, node)
    run_id = saved.run_id if saved else tracker.find_trial_run(ctx.experiment_id, ctx.parent_run_id, trial_id)
    if run_id is None:
        run_id = _start_trial_run(tracker, ctx, spec, point, trial_id)
    tracker.record_attempt(run_id, node.node_id, node.ip)
    fit_on_node(spec, ctx.plans[spec.baseline].gpu, _reporter(tracker, ctx, run_id), saved.state if saved else None)


@dataclass(frozen=True)
class RunLink:
    """Ties a sweep's Optuna trials to their MLflow runs (the searcher's RunLinker): tags the run of
    a Ray trial with its Optuna trial number and returns the run's id, None while it has no run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def __call__(self, trial_id: str, number: int) -> str | None:
        tracker = tracking.tracker_for(self.tracking_uri)
        run_id = tracker.find_trial_run(self.experiment_id, self.parent_run_id, trial_id)
        if run_id is not None:
            tracker.set_tags(run_id, {tracking.OPTUNA_TRIAL: str(number)})
        return run_id


class CloseTrialRuns(tune.Callback):
    """Ends each trial's MLflow run from the driver: FINISHED, KILLED by the scheduler named
    `stopped_by` (asha, halving), or FAILED with the error."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        tags: dict[str, str],
        stopped_by: str = tracking.STOPPED_BY_ASHA,
    ) -> None:
        self._tracking_uri = tracking_uri
        self._experiment_id = experiment_id
        self._parent = parent_run_id
        self._tags = tags
        self._stopped_by = stopped_by

    def _tracker(self) -> tracking.Tracker:
        return tracking.tracker_for(self._tracking_uri)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tracker = self._tracker()
        run_id = tracker.find_trial_run(self._experiment_id, self._parent, trial.trial_id)
        if run_id is None:
            return
        last = trial.last_result or {}
        if last.get(DONE_KEY):
            tracker.finish(run_id, tracking.FINISHED)
        else:
            epoch = str(last.get(EPOCH_KEY, 0))
            tracker.finish(run_id, tracking.KILLED, {tracking.STOPPED_BY: self._stopped_by, "stopped_at_epoch": epoch})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tracker = self._tracker()
        run_id = tracker.find_trial_run(self._experiment_id, self._parent, trial.trial_id)
        if run_id is None:
            # The trial died before it could open its run: record the failure all the same.
            run_id = tracker.start_run(
                self._experiment_id,
                name=f"{trial.config.get('baseline')}-{trial.trial_id}",
                run_type=RunType.TRIAL,
                parent=self._parent,
                tags={
                    **self._tags,
                    tracking.BASELINE: str(trial.config.get("baseline")),
                    tracking.TRIAL_ID: trial.trial_id,
                },
                params={},
            )
        tracker.finish(run_id, tracking.FAILED, {tracking.ERROR: _error_text(trial)})

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._tracker().find_trial_run(self._experiment_id, self._parent, trial.trial_id)
        if run_id is not None:
            retries = trial.run_metadata.num_failures
            self._tracker().set_tags(
                run_id, {tracking.RETRIES: str(retries), f"retry_{retries}_error": _error_text(trial)}
            )


def _error_text(trial: Any) -> str:
    """Return the last lines of a trial's error: the exception, not Ray's wrapping of it."""
    return str(trial.get_error() or "unknown error")[-4000:]
