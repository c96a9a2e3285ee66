"""What runs inside one Ray trial, and the driver-side callback that closes its MLflow run."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mlflow.exceptions import MlflowException
from ray import tune

from harness import ray_compat, tracking
from harness.config import ExperimentConfig, ResourcesSpec
from harness.data.prepare import PreparedData
from harness.errors import TrackingUnreachable
from harness.experiment import ExperimentSetup, epoch_metrics, log_epoch, run_tags
from harness.run_spec import RunSpec
from harness.train import GPU_MEMORY, EpochReport, FitResult, OutOfMemory, TrainState, fit

from ._checkpoint import CHECKPOINT_FILE, TrialCheckpoint, load_checkpoint, save_checkpoint
from ._failures import (
    ERROR,
    OUT_OF_MEMORY,
    TRACKING_UNREACHABLE,
    deterministic_cause,
    failure_cause,
    trial_error,
)
from ._keys import CAUSE_KEY, DONE_KEY, EPOCH_KEY, ERROR_KEY, FAILED_KEY, RUN_ID_KEY, STUDY_TRIAL_KEY, trial_point
from ._nodes import NodeIdentity, check_manifest, current_node, local_data, trial_device

# Per epoch: the size of the checkpoint the trial saved, 0 when none. Named to sort after `objective`:
# MLflow's compare view colours by the first metric its runs share, and its chart views order
# metrics by name.
CHECKPOINT_MB = "trial_checkpoint_mb"
RunType = tracking.RunType


@dataclass(frozen=True)
class SweepContext:
    """What a trial needs from the driver beyond the experiment itself: the MLflow store, experiment
    and sweep run, the tags of every run, the prepared data and the driver's folder of it (every
    path absolute, on the driver), and the resources each baseline's trials were granted."""

    config: ExperimentConfig
    data: PreparedData
    data_dir: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]
    granted: dict[str, ResourcesSpec]

    @property
    def objective(self) -> str:
        """Return the sweep's metric."""
        return self.config.search.metric

    @property
    def run_link(self) -> RunLink:
        """Return the lookup of this sweep's trial runs."""
        return RunLink(self.tracking_uri, self.experiment_id, self.parent_run_id)

    def resource_tags(self, baseline: str) -> dict[str, str]:
        """Return the run tags recording the CPU and GPU share of `baseline`'s trials (the leaderboard's cost)."""
        granted = self.granted[baseline]
        return {tracking.CPU_SHARE: f"{granted.cpu:g}", tracking.GPU_SHARE: f"{granted.gpu:g}"}

    def run_tags(self, spec: RunSpec) -> dict[str, str]:
        """Return the tags of a run that fits `spec` (a trial, or a winner on one fold)."""
        return run_tags(self.tags, spec, self.objective) | self.resource_tags(spec.baseline)


def driver_data_dir(config: ExperimentConfig) -> Path:
    """Return the absolute folder, on the driver, of the prepared data every trial reads."""
    return (config.output_dir / "_data").resolve()


def sweep_context(
    config: ExperimentConfig, setup: ExperimentSetup, parent: str, granted: dict[str, ResourcesSpec]
) -> SweepContext:
    """Return what every trial and fold task of the sweep under run `parent` needs from the driver."""
    return SweepContext(
        config=config,
        data=setup.data,
        data_dir=driver_data_dir(config),
        tracking_uri=setup.tracker.uri,
        experiment_id=setup.experiment_id,
        parent_run_id=parent,
        tags=setup.tags,
        granted=granted,
    )


def node_spec(ctx: SweepContext, baseline: str, point: dict[str, Any], fold: int, node: NodeIdentity) -> RunSpec:
    """Return the RunSpec of `point` on `fold` as this node runs it (its data paths and device),
    after checking that the node's manifest is the driver's."""
    data = local_data(ctx.data, ctx.data_dir)
    check_manifest(data.manifest_path, ctx.data.manifest_hash, node)
    spec = RunSpec.build(ctx.config, ctx.data, baseline, fold=fold, point=point)
    return spec.on_node(data, trial_device(ctx.config.training.device))


def fit_on_node(
    spec: RunSpec, gpu: float, report: Callable[[EpochReport], None], resume: TrainState | None = None
) -> FitResult:
    """Run `fit` with a `gpu` share of a GPU; returns its result. Out of GPU memory on a share, the
    error says that the trials on a GPU share its memory."""
    try:
        return fit(spec, report, resume)
    except OutOfMemory as exc:
        if not gpu or GPU_MEMORY not in str(exc):
            raise
        raise OutOfMemory(
            f"{exc}, or raise the baseline's resources.gpu (a {gpu:g} GPU share: the trials on a GPU share its memory)"
        ) from exc


def _saved() -> TrialCheckpoint | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        # Plain data only: the storage path may be shared, and a pickle runs code when loaded.
        return load_checkpoint(Path(folder) / CHECKPOINT_FILE)


def _start_trial_run(
    tracker: tracking.Tracker, ctx: SweepContext, spec: RunSpec, number: int | None, trial_id: str
) -> str:
    """Open the MLflow run of a trial that has none yet, named and tagged by its Optuna trial
    `number`; returns its id. The driver's CloseTrialRuns ends it: a trial the scheduler stops
    never runs again to end its own run."""
    return tracker.start_run(
        ctx.experiment_id,
        name=tracking.trial_name(spec.baseline, number, trial_id),
        run_type=RunType.TRIAL,
        parent=ctx.parent_run_id,
        tags={**ctx.run_tags(spec), **trial_tags(trial_id, number)},
        params=spec.logged_params(),
    )


def trial_tags(trial_id: str, number: int | None) -> dict[str, str]:
    """Return the tags naming a trial's run: its Ray trial id, and its Optuna trial number if known."""
    return {tracking.TRIAL_ID: trial_id} | ({tracking.OPTUNA_TRIAL: str(number)} if number is not None else {})


class _TrialReporter:
    """The epoch callback of a trial: log to its run, then checkpoint and report to Tune.

    A trial resumed from a checkpoint older than its run's last logged epoch (its driver died in
    between) trains those epochs again without logging them twice.
    """

    def __init__(self, tracker: tracking.Tracker, ctx: SweepContext, run_id: str, logged_through: int) -> None:
        self._tracker, self._ctx, self._run_id = tracker, ctx, run_id
        self._logged_through = logged_through
        self.last: dict[str, Any] = {}

    def __call__(self, entry: EpochReport) -> None:
        ctx = self._ctx
        metrics = epoch_metrics(entry, ctx.objective)
        self.last = {**metrics, DONE_KEY: float(entry.done), EPOCH_KEY: entry.epoch, RUN_ID_KEY: self._run_id}
        saving = entry.done or entry.epoch % ctx.config.training.checkpoint_every == 0
        with tempfile.TemporaryDirectory() as folder:
            # The checkpoint is written first, so its size goes in the epoch's one batch of metrics.
            size = self._save(Path(folder), entry) if saving else 0
            log_epoch(
                self._tracker,
                self._run_id,
                entry,
                objective=ctx.objective,
                class_names=ctx.data.class_names,
                log_metrics=entry.epoch > self._logged_through,
                extra={CHECKPOINT_MB: size / 1e6},
            )
            # Everything is logged before this report: once ASHA answers STOP, nothing after it runs.
            tune.report(self.last, checkpoint=tune.Checkpoint.from_directory(folder) if saving else None)

    def _save(self, folder: Path, entry: EpochReport) -> int:
        """Write the trial's checkpoint into `folder` (only the last result once the trial is done);
        returns its size in bytes."""
        state = None if entry.done or entry.snapshot is None else entry.snapshot()
        return save_checkpoint(folder, TrialCheckpoint(self._run_id, state, self.last))


def _fail(tracker: tracking.Tracker, run_id: str | None, exc: BaseException, cause: str, last: dict) -> None:
    """End a trial that failed as a retry would fail again: its run FAILED with the error (when it
    has one), and one last result flagged FAILED_KEY, so Tune ends the trial without a retry."""
    if run_id is not None:
        tags = {tracking.ERROR: tracking.error_text(exc), tracking.FAILURE_CAUSE: cause}
        try:
            tracker.finish(run_id, tracking.FAILED, tags)
        except (MlflowException, OSError):
            pass  # a store on a full disk: the next sweep's orphan check ends the run
    epoch = {"objective": last.get("objective", math.nan), EPOCH_KEY: last.get(EPOCH_KEY, 0)}
    failed = {FAILED_KEY: 1.0, CAUSE_KEY: cause, ERROR_KEY: tracking.error_text(exc).splitlines()[0]}
    tune.report({**epoch, DONE_KEY: 0.0, **failed, RUN_ID_KEY: run_id})


def run_trial(config: dict[str, Any], *, ctx: SweepContext) -> None:
    """Train one sampled configuration, logging to its own MLflow child run and reporting to Tune.

    A trial restored after a failure or a resumed sweep continues from its last epoch checkpoint
    in the MLflow run it opened first, so no trial ever has two runs. A failure a retry would
    repeat ends the trial FAILED at once (harness.sweep._failures).
    """
    # Ray logs a line per saved checkpoint, i.e. per epoch of every trial.
    ray_compat.quiet_checkpoint_log()
    point = trial_point(config)
    node = current_node()
    trial_id = tune.get_context().get_trial_id()
    tracker = tracking.tracker_for(ctx.tracking_uri)
    saved = _saved()
    if saved and saved.metrics.get(DONE_KEY):
        # The trial had finished when the driver died; Tune only has to hear its last result again.
        tune.report(saved.metrics)
        return
    run_id = saved.run_id if saved else None
    reporter = None
    try:
        spec = node_spec(ctx, config["baseline"], point, ctx.config.protocol.search_fold, node)
        run_id = run_id or tracker.find_trial_run(ctx.experiment_id, ctx.parent_run_id, trial_id)
        # Only a run this trial opened before can hold epochs already.
        logged_through = tracker.last_step(run_id, "objective") if run_id else 0
        run_id = run_id or _start_trial_run(tracker, ctx, spec, config.get(STUDY_TRIAL_KEY), trial_id)
        tracker.record_start(run_id, node.node_id, node.ip)
        reporter = _TrialReporter(tracker, ctx, run_id, logged_through)
        fit_on_node(spec, ctx.granted[spec.baseline].gpu, reporter, saved.state if saved else None)
    except Exception as exc:
        cause = deterministic_cause(exc)
        if cause is None:
            raise
        _fail(tracker, run_id, exc, cause, reporter.last if reporter else {})


@dataclass(frozen=True)
class RunLink:
    """Finds the MLflow run of a Ray trial of the sweep under `parent_run_id`: the one `result`
    names, else (a trial that failed before its first result) the one the store holds; None if it
    has none. It is the searcher's RunLinker too."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def __call__(self, trial_id: str, result: dict | None = None) -> str | None:
        if result and result.get(RUN_ID_KEY):
            return result[RUN_ID_KEY]
        tracker = tracking.tracker_for(self.tracking_uri)
        return tracker.find_trial_run(self.experiment_id, self.parent_run_id, trial_id)

    def in_tune(self, trial_id: str) -> str | None:
        """Return the run of Ray trial `trial_id` from inside Tune's loop (the searcher's lookup),
        where a tracking server that stopped answering stops the loop."""
        with _stopping_tune_on_outage():
            return self(trial_id)


def close_trial_run(tracker: tracking.Tracker, run_id: str, last: dict, stopped_by: str) -> None:
    """End the run of a trial Tune saw complete with `last` as its last result: FINISHED, tagged
    `stopped_by` when that scheduler stopped it early (by design, so no failure mark); a failed
    trial ended its run itself."""
    if last.get(FAILED_KEY):
        tracker.finish(run_id, tracking.FAILED, {tracking.FAILURE_CAUSE: str(last.get(CAUSE_KEY))})
    elif last.get(DONE_KEY):
        tracker.finish(run_id, tracking.FINISHED)
    else:
        epoch = str(last.get(EPOCH_KEY, 0))
        tracker.finish(run_id, tracking.FINISHED, {tracking.STOPPED_BY: stopped_by, "stopped_at_epoch": epoch})


class TrackingLost(BaseException):
    """A TrackingUnreachable on its way out of Tune's loop: Tune turns any Exception a callback
    raises into a TuneError holding only its text, and this is no Exception. The driver raises its
    `outage` (harness.sweep._driver)."""

    def __init__(self, outage: TrackingUnreachable) -> None:
        super().__init__(str(outage))
        self.outage = outage


@contextmanager
def _stopping_tune_on_outage() -> Iterator[None]:
    """Let a TrackingUnreachable raised in the block stop Tune's loop at once, as TrackingLost: no
    trial is retried or failed for it, and Tune's state stays as it last saved it, for --resume;
    yields nothing."""
    try:
        yield
    except TrackingUnreachable as outage:
        raise TrackingLost(outage) from None


class _SaidInOneLine(logging.Filter):
    """Keeps Tune's traceback of a failed trial off the console when the sweep says that failure in
    one line itself: a tracking server that stopped answering, a worker killed for memory."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or failure_cause(error) not in (TRACKING_UNREACHABLE, OUT_OF_MEMORY)


_SAID_IN_ONE_LINE = _SaidInOneLine()


class CloseTrialRuns(tune.Callback):
    """Ends each trial's MLflow run from the driver: FINISHED (stopped early by the scheduler named
    `stopped_by`, asha or halving, or not), or FAILED with the error."""

    def __init__(self, run_of: RunLink, tags: dict[str, str], stopped_by: str = tracking.STOPPED_BY_ASHA) -> None:
        self._run_of = run_of
        self._tags = tags
        self._stopped_by = stopped_by

    def _tracker(self) -> tracking.Tracker:
        return tracking.tracker_for(self._run_of.tracking_uri)

    def setup(self, *args: Any, **info: Any) -> None:
        # Here, in the process that runs Tune's loop (the head's under Ray Client), before any trial.
        ray_compat.end_trials_killed_for_memory()
        logging.getLogger(ray_compat.TRIAL_ERROR_LOGGER).addFilter(_SAID_IN_ONE_LINE)

    def _stop_if_unreachable(self, trial: Any) -> None:
        """Raise TrackingUnreachable when `trial` failed on a tracking server that stopped answering
        (its own error, or the driver's tracker giving up in a searcher call Tune caught), rather than
        retry or fail trials that cannot log."""
        error = trial_error(trial)
        if error is None or failure_cause(error) != TRACKING_UNREACHABLE:
            return
        outage = tracking.root_cause(error) if isinstance(error, BaseException) else self._tracker().unreachable
        if isinstance(outage, TrackingUnreachable):
            raise outage

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with _stopping_tune_on_outage():
            run_id = self._run_of(trial.trial_id, trial.last_result)
            if run_id is not None:
                close_trial_run(self._tracker(), run_id, trial.last_result or {}, self._stopped_by)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with _stopping_tune_on_outage():
            self._stop_if_unreachable(trial)
            self._fail_run(trial)

    def _fail_run(self, trial: Any) -> None:
        """End the run of a trial Tune saw fail FAILED with its error, opening one if it had none."""
        tracker = self._tracker()
        run_id = self._run_of(trial.trial_id, trial.last_result)
        if run_id is None:
            # The trial died before it could open its run: record the failure all the same.
            baseline, number = str(trial.config.get("baseline")), trial.config.get(STUDY_TRIAL_KEY)
            run_id = tracker.start_run(
                self._run_of.experiment_id,
                name=tracking.trial_name(baseline, number, trial.trial_id),
                run_type=RunType.TRIAL,
                parent=self._run_of.parent_run_id,
                tags={**self._tags, tracking.BASELINE: baseline, **trial_tags(trial.trial_id, number)},
                params={},
            )
        tracker.finish(run_id, tracking.FAILED, _error_tags(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with _stopping_tune_on_outage():
            self._stop_if_unreachable(trial)
            run_id = self._run_of(trial.trial_id, trial.last_result)
            if run_id is not None:
                retries = trial.num_failures
                error = _error_tags(trial)[tracking.ERROR]
                retried = {tracking.RETRIES: str(retries), f"retry_{retries}_error": error}
                self._tracker().count_attempt(run_id, retried)


def _error_tags(trial: Any) -> dict[str, str]:
    """Return the error and failure-cause tags of a trial Tune saw raise."""
    error = trial_error(trial)
    if error is None:
        return {tracking.ERROR: "unknown error", tracking.FAILURE_CAUSE: ERROR}
    return {tracking.ERROR: tracking.error_text(error), tracking.FAILURE_CAUSE: failure_cause(error)}
