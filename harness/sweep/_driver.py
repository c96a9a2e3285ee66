"""A sweep: one Ray Tune Tuner over every baseline of an experiment, Optuna proposing, ASHA
stopping; then each baseline's winner retrained on every fold and ensembled, and the floors fitted
on the same folds.

`run_sweep` runs three named steps inside the sweep's parent run: open (or resume) the sweep,
search, and after the search. Paths are resolved to absolute ones in the driver, and the MLflow
experiment and parent run exist before the first trial (NOTES-ray-optuna-mlflow.md).
"""

from __future__ import annotations

import functools
import itertools
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune

from harness import tracking
from harness.config import ExperimentConfig, ResourcesSpec
from harness.environment import EMBEDDED_RAY, MLFLOW_QUIET, environment
from harness.errors import InputError
from harness.experiment import ExperimentSetup, set_up
from harness.interrupts import Interrupted, Interrupts, catching_interrupts
from harness.locking import sqlite_path
from harness.run_spec import epoch_budget
from harness.server import check_reachable

from ._embeddings import prepare_embeddings
from ._failures import ERROR, failure_cause
from ._floors import track_floors
from ._front_page import write_front_page
from ._keys import CAUSE_KEY, DONE_KEY, FAILED_KEY
from ._lines import TrialLines, fold_epoch_line, fold_line
from ._nodes import check_every_node
from ._orphans import DRIVER, check_not_ended, check_not_running, close_orphans, driver_identity
from ._record import check_stored_state, interrupted_sweep, reconcile_trial_runs, write_record
from ._retrain import EnsembleOutcome, retrain_winners
from ._search import optuna_storage, start_points, study_name
from ._studies import plot_study, warm_start_points
from ._trial import CloseTrialRuns, SweepContext, TrackingLost, driver_data_dir, sweep_context
from ._tuner import STATE_SYNC_SECONDS, granted_resources, new_tuner, restored_tuner, search_notes, stopping_scheduler
from ._winners import trial_configs, winners

RunType = tracking.RunType
# Ray Client sessions that fail to start are retried this often, waiting longer each time.
CLIENT_ATTEMPTS = 3
CLIENT_RETRY_SECONDS = 5.0


@dataclass
class BaselineOutcome:
    """Trial counts of one baseline in a finished sweep, failures by cause."""

    trials: int = 0
    finished: int = 0
    stopped_early: int = 0
    failures: Counter = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        """Return how many of the baseline's trials failed, whatever the cause."""
        return sum(self.failures.values())

    def counts(self) -> dict[str, int]:
        """Return the trial counts as the parent run logs them (sweep_<count>)."""
        return {
            "trials": self.trials,
            "finished": self.finished,
            "stopped_early": self.stopped_early,
            "failed": self.failed,
        }

    def add(self, metrics: dict, error: BaseException | None) -> None:
        """Count one trial from its last result and the error Tune saw it raise (None if none)."""
        self.trials += 1
        if error is not None or metrics.get(FAILED_KEY):
            cause = metrics.get(CAUSE_KEY) or (failure_cause(error) if error is not None else ERROR)
            self.failures[cause] += 1
        elif metrics.get(DONE_KEY):
            self.finished += 1
        else:
            self.stopped_early += 1


@dataclass
class SweepSummary:
    """What a sweep did and where to look at it."""

    experiment: str
    tracking_uri: str
    parent_run_id: str
    split_hash: str
    wall_seconds: float
    storage: Path
    resumed: bool = False
    baselines: dict[str, BaselineOutcome] = field(default_factory=dict)
    ensembles: list[EnsembleOutcome] = field(default_factory=list)
    floors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def stopped_early(self) -> int:
        """Return how many trials ASHA stopped, over all baselines."""
        return sum(b.stopped_early for b in self.baselines.values())

    @property
    def failures(self) -> Counter:
        """Return how many trials failed, by cause, over all baselines."""
        return sum((b.failures for b in self.baselines.values()), Counter())


class AllTrialsFailed(RuntimeError):
    """Every trial of the sweep failed; carries the sweep's summary."""

    def __init__(self, summary: SweepSummary) -> None:
        causes = ", ".join(f"{n} {cause}" for cause, n in summary.failures.most_common())
        super().__init__(f"every trial of sweep {summary.storage.name} failed ({causes})")
        self.summary = summary


@dataclass
class _Sweep:
    """A sweep whose parent run is open: its Tune folder, its parent run, whether it resumes an
    interrupted one, the points each study evaluates first, and notes for the user."""

    folder: Path
    parent: str
    resumed: bool
    starts: dict[str, list[dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@contextmanager
def _ray(address: str | None) -> Iterator[None]:
    """Join `address` (auto, HOST:PORT or ray://HOST:PORT) or start an embedded local Ray for the
    block; shuts down only a Ray this call started."""
    if ray.is_initialized():
        yield
        return
    with environment(EMBEDDED_RAY):
        # "local" rather than None: a killed driver can leave a stale cluster address behind, which a
        # plain ray.init() would try to join.
        _init_ray(address or "local")
        try:
            yield
        finally:
            ray.shutdown()


def _init_ray(address: str, attempts: int = CLIENT_ATTEMPTS) -> None:
    """Start or join Ray at `address`. A Ray Client head starts a server process per session,
    which can die while it starts on a loaded head: that answer is retried `attempts` times. An
    unreachable or refusing Ray Client head is one line."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, include_dashboard=False, configure_logging=False)
            return
        except ConnectionError as exc:
            # A failed Ray Client connect leaves its half-made context behind; the next init
            # (this one's retry, or any later one in the process) would assert on it.
            ray.shutdown()
            if not address.startswith("ray://"):
                raise
            if not isinstance(exc, ConnectionAbortedError) or attempt == attempts:
                tries = f" after {attempt} tries" if attempt > 1 else ""
                reason = str(exc).strip().splitlines()[-1]
                raise InputError(
                    f"--address {address}: no Ray Client session{tries} ({reason}); the head's "
                    "Ray log folder has ray_client_server*.err"
                ) from exc
            time.sleep(CLIENT_RETRY_SECONDS * attempt)


@contextmanager
def _tune_environment() -> Iterator[None]:
    """Set what Tune's driver reads, and what the workers of a Ray started in the block inherit
    (MLflow's quiet settings), for the block; yields nothing."""
    # Tune's interrupt warnings end in Ray's own restore hint; the CLI prints the harness's.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    tune_settings = {
        # Tune saves the experiment's state every few seconds; a driver killed in between reruns
        # only what finished in those seconds (and a finished trial just reports again).
        "TUNE_GLOBAL_CHECKPOINT_S": str(STATE_SYNC_SECONDS),
        # That frequency is deliberate; Tune would otherwise warn about it at every trial checkpoint.
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    }
    with environment({**MLFLOW_QUIET, **tune_settings}):
        yield


def _sweep_params(config: ExperimentConfig, setup: ExperimentSetup, granted: dict[str, ResourcesSpec]) -> dict:
    search, protocol = config.search, config.protocol
    return {
        "baselines": ",".join(b.name for b in config.baselines),
        "trials_per_baseline": search.trials,
        "max_epochs": search.max_epochs,
        "grace_period": search.grace_period,
        "reduction_factor": search.reduction_factor,
        "objective": search.metric,
        "sampler": search.sampler,
        "sampler_seed": search.seed,
        "folds": protocol.folds,
        "test_fraction": protocol.test_fraction,
        "split_seed": protocol.seed,
        "search_fold": protocol.search_fold,
        "patients": setup.data.patients,
        "images": setup.data.rows,
        "max_concurrent": search.max_concurrent or "unlimited",
        "max_failures": search.max_failures,
        "optuna_storage": config.resolved_optuna_storage(),
        "retrain": search.retrain,
        "retrain_epochs": search.retrain_budget,
        "reproducible": search.reproducible,
        **{f"resources_{n}": f"cpu={r.cpu:g},gpu={r.gpu:g}" for n, r in granted.items()},
    }


def new_sweep_folder(storage: Path, stamp: str) -> Path:
    """Create and return a folder of its own for a new sweep in `storage`: `stamp` (sweep-<UTC
    time to the second>), with -2, -3, ... when another sweep took that name in the same second."""
    storage.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        folder = storage / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise AssertionError("unreachable")


def _start(config: ExperimentConfig, setup: ExperimentSetup, granted: dict[str, ResourcesSpec]) -> _Sweep:
    """Return a new sweep with its parent run started, after every check that can refuse it."""
    folder = new_sweep_folder(config.resolved_storage_path(), f"sweep-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
    try:
        return _start_in(folder, config, setup, granted)
    except BaseException:
        folder.rmdir()  # refused before anything was written into it
        raise


def _start_in(
    folder: Path, config: ExperimentConfig, setup: ExperimentSetup, granted: dict[str, ResourcesSpec]
) -> _Sweep:
    spaces = config.baseline_spaces()
    warm: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    if config.search.warm_start is not None:
        warm, notes = warm_start_points(
            config.resolved_optuna_storage(),
            config.name,
            f"{config.name}/{folder.name}",
            config.search.warm_start.sweep,
            spaces,
            top=config.search.warm_start.top,
            mode=config.search.mode,
        )
    notes += close_orphans(setup.tracker, setup.experiment_id)
    parent = setup.tracker.start_run(
        setup.experiment_id,
        name=tracking.sweep_name(config.name, folder.name),
        run_type=RunType.SWEEP,
        tags={**setup.tags, "ray_storage": str(folder), DRIVER: driver_identity()},
        params=_sweep_params(config, setup, granted),
    )
    starts = {name: start_points(space, warm.get(name, [])) for name, space in spaces.items()}
    return _Sweep(folder, parent, resumed=False, starts=starts, notes=notes)


def _check_reopenable(setup: ExperimentSetup, folder: Path, record: dict) -> None:
    """Raise InputError unless the sweep in `folder` (its `record`) can be resumed on this data: it
    ran on the same split, no live driver drives it, and it has not ended (resuming a FINISHED or
    FAILED sweep would rewrite its outcome)."""
    if record["split_hash"] != setup.data.split_hash:
        raise InputError(
            f"--resume: the data now gives split {setup.data.split_hash[:12]}, "
            f"the sweep ran on {record['split_hash'][:12]}"
        )
    check_not_running(setup.tracker, record["parent_run_id"], folder.name)
    check_not_ended(setup.tracker, record["parent_run_id"], folder.name)


def _reopen(setup: ExperimentSetup, folder: Path, record: dict) -> _Sweep:
    """Return the interrupted sweep in `folder` with its parent run RUNNING again."""
    parent = record["parent_run_id"]
    setup.tracker.reopen(parent)
    resumed = {"resumed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), DRIVER: driver_identity()}
    setup.tracker.set_tags(parent, resumed)
    return _Sweep(folder, parent, resumed=True)


def _settle_resumed(config: ExperimentConfig, setup: ExperimentSetup, sweep: _Sweep) -> list[str]:
    """Close what the dead driver of a resumed sweep left RUNNING; returns notes. Trial runs follow
    Tune's saved state; folds, ensembles and floors it was fitting end KILLED (orphaned=true) and
    are fitted again."""
    tracker = setup.tracker
    notes = reconcile_trial_runs(tracker, setup.experiment_id, sweep.parent, sweep.folder, stopping_scheduler(config))
    for run in tracker.running_under(setup.experiment_id, sweep.parent):
        if run.data.tags.get(tracking.RUN_TYPE) != RunType.TRIAL:
            tracker.finish(run.info.run_id, tracking.KILLED, {tracking.ORPHANED: "true"})
    return notes


@contextmanager
def _naming_parent(parent: str) -> Iterator[None]:
    """Let an interruption raised in the block name the sweep's run, so its runs can be closed."""
    try:
        yield
    except Interrupted as exc:
        exc.parent_run_id = parent
        raise


@contextmanager
def _open_or_resume(
    config: ExperimentConfig,
    setup: ExperimentSetup,
    granted: dict[str, ResourcesSpec],
    previous: tuple[Path, dict] | None,
) -> Iterator[_Sweep]:
    """Yield a new sweep, or the interrupted `previous` one (its folder and record), with its parent
    run open; the parent ends FINISHED, KILLED or FAILED with the block."""
    sweep = _reopen(setup, *previous) if previous else _start(config, setup, granted)
    with _naming_parent(sweep.parent), setup.tracker.ending(sweep.parent):
        if sweep.resumed:
            sweep.notes += _settle_resumed(config, setup, sweep)
        else:
            setup.tracker.log_file(sweep.parent, setup.data.split_path, "split")
            write_record(
                sweep.folder,
                config,
                parent=sweep.parent,
                experiment_id=setup.experiment_id,
                split_hash=setup.data.split_hash,
            )
        yield sweep


def _tuner(config: ExperimentConfig, ctx: SweepContext, sweep: _Sweep, verbose: bool) -> tune.Tuner:
    """Return the sweep's Tuner: a restored one when resuming."""
    if sweep.resumed:
        return restored_tuner(ctx, sweep.folder)
    stopper = stopping_scheduler(config)
    callbacks: list[tune.Callback] = [CloseTrialRuns(ctx.run_link, ctx.tags, stopper)]
    if verbose:
        callbacks.append(TrialLines(config.search.metric, stopper, functools.partial(epoch_budget, config)))
    return new_tuner(config, ctx, sweep.folder, sweep.starts, callbacks)


def _search(
    config: ExperimentConfig, ctx: SweepContext, sweep: _Sweep, interrupts: Interrupts, verbose: bool
) -> tune.ResultGrid:
    """Run the sweep's Tuner until every trial has ended; returns its results. Raises
    Interrupted when a signal stopped it (Tune saved its state first)."""
    tuner = _tuner(config, ctx, sweep, verbose)
    interrupts.in_search = True
    try:
        grid = tuner.fit()
    except TrackingLost as lost:
        # Tune stopped without saving its state again: --resume continues from its last save.
        raise lost.outage from None
    finally:
        interrupts.in_search = False
    interrupts.check()
    return grid


def _outcomes(grid: tune.ResultGrid, names: list[str]) -> dict[str, BaselineOutcome]:
    outcomes = {name: BaselineOutcome() for name in names}
    for result, config in trial_configs(grid):
        if config:  # a trial Tune never started has no configuration
            outcomes[config["baseline"]].add(result.metrics or {}, result.error)
    return outcomes


def _log_study_plots(config: ExperimentConfig, tracker: tracking.Tracker, sweep: _Sweep) -> list[str]:
    """Log each baseline's optimisation-history and importance plots to the parent run; returns notes."""
    notes = []
    with tempfile.TemporaryDirectory() as folder:
        for baseline in config.baselines:
            name = study_name(f"{config.name}/{sweep.folder.name}", baseline.name)
            files, skipped = plot_study(config.resolved_optuna_storage(), name, Path(folder))
            notes += skipped
            for file in files:
                tracker.log_file(sweep.parent, file, "optuna")
    return notes


def _after_search(
    config: ExperimentConfig,
    setup: ExperimentSetup,
    ctx: SweepContext,
    sweep: _Sweep,
    grid: tune.ResultGrid,
    summary: SweepSummary,
    interrupts: Interrupts,
    verbose: bool,
) -> None:
    """Log the studies' plots, name each baseline's winner on the parent run, retrain each winner
    on every fold and ensemble the folds, and fit the floors not logged yet; records what they did
    in `summary`. A signal received meanwhile stops it between these steps at the latest."""
    summary.notes += _log_study_plots(config, setup.tracker, sweep)
    chosen = winners(grid, ctx.run_link, config.search.mode)
    write_front_page(setup.tracker, sweep.parent, config.name, config.search.metric, chosen)
    interrupts.check()
    if config.search.retrain == "all_folds" and config.protocol.test_fraction > 0:
        lines = (fold_line, fold_epoch_line) if verbose else (None, None)
        summary.ensembles, notes = retrain_winners(ctx, chosen, config.protocol.folds, *lines)
        summary.notes += notes
        interrupts.check()
    floors = setup.tracker.child_runs(setup.experiment_id, sweep.parent, RunType.FLOOR)
    logged = {r.data.tags[tracking.BASELINE] for r in floors if r.info.status == tracking.FINISHED}
    summary.floors = track_floors(
        [f for f in config.floors if f not in logged],
        setup,
        sweep.parent,
        search_fold=config.protocol.search_fold,
        objective=config.search.metric,
        seed=config.protocol.seed,
    )


def _log_counts(tracker: tracking.Tracker, summary: SweepSummary) -> None:
    """Log the sweep's trial counts over all baselines and its wall time on the parent run."""
    counts: Counter[str] = Counter()
    for outcome in summary.baselines.values():
        counts.update(outcome.counts())
    metrics = {f"sweep_{k}": v for k, v in counts.items()} | {"wall_seconds": summary.wall_seconds}
    tracker.log_metrics(summary.parent_run_id, metrics, step=0)


def run_sweep(
    config: ExperimentConfig, *, address: str | None = None, resume: bool = False, verbose: bool = False
) -> SweepSummary:
    """Index, split and cache the dataset, then tune every baseline of `config` on a Ray cluster
    (joined at `address`, or embedded), retrain each winner on every fold and ensemble the folds;
    returns the summary. `resume` continues the newest interrupted sweep of this experiment.

    `verbose` prints progress bars and one line per trial start, retry and end.
    """
    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_reachable(config.resolved_tracking_uri())
    previous = None
    if resume:
        with _orphans_closed_on_refusal(config):
            previous = interrupted_sweep(config, config.resolved_storage_path())
    with catching_interrupts() as interrupts:
        # Data, the tracking store and the Optuna storage are ready (the stores created under file
        # locks: two sweeps may start together) before Ray starts.
        setup = set_up(config, show_progress=verbose, sweep=True)
        if previous is not None:
            with _orphans_closed_on_refusal(config):
                # Before Tune reads any of it: a file cut short (a full disk, which can also end a
                # sweep) or planted there is one line naming it, nothing loaded.
                check_stored_state(previous[0])
                _check_reopenable(setup, *previous)
        optuna_storage(config.resolved_optuna_storage())
        try:
            with _tune_environment(), _ray(address):
                if address is not None:  # an embedded Ray's one node is the driver's own
                    check_every_node(setup.data, driver_data_dir(config))
                # Once per encoder and data, over the cluster, before any probe trial reads them.
                prepare_embeddings(config, setup.data, show_progress=verbose)
                interrupts.install()
                return _sweep(config, setup, previous, interrupts, started=started, verbose=verbose)
        except Interrupted as exc:
            # Ray is down by now, so nothing writes to these runs after they are closed.
            if exc.parent_run_id is not None:
                tags = {tracking.INTERRUPTED: exc.signal_name}
                setup.tracker.kill_running_under(setup.experiment_id, exc.parent_run_id, tags)
            raise


@contextmanager
def _orphans_closed_on_refusal(config: ExperimentConfig) -> Iterator[None]:
    """Run the block (checks of the sweep `--resume` continues); when it refuses, end first the runs
    a dead driver left RUNNING in the experiment (orphaned), as a new sweep would: a refusal leaves
    no run RUNNING. Yields nothing."""
    try:
        yield
    except InputError:
        uri = config.resolved_tracking_uri()
        database = sqlite_path(uri)
        if database is None or database.is_file():  # no store yet: no run either
            tracker = tracking.tracker_for(uri)
            experiment_id = tracker.experiment_id(config.name, create=False)
            if experiment_id is not None:
                close_orphans(tracker, experiment_id)
        raise


def _sweep(
    config: ExperimentConfig,
    setup: ExperimentSetup,
    previous: tuple[Path, dict] | None,
    interrupts: Interrupts,
    *,
    started: float,
    verbose: bool,
) -> SweepSummary:
    """Open (or resume) the sweep, search, and run what follows the search; returns the summary."""
    granted, resource_notes = granted_resources(config)
    with _open_or_resume(config, setup, granted, previous) as sweep:
        summary = SweepSummary(
            experiment=config.name,
            tracking_uri=setup.tracker.uri,
            parent_run_id=sweep.parent,
            split_hash=setup.data.split_hash,
            wall_seconds=0.0,
            storage=sweep.folder,
            resumed=sweep.resumed,
            notes=setup.notes + resource_notes + sweep.notes + search_notes(config),
        )
        ctx = sweep_context(config, setup, sweep.parent, granted)
        grid = _search(config, ctx, sweep, interrupts, verbose)
        summary.baselines = _outcomes(grid, [b.name for b in config.baselines])
        summary.wall_seconds = time.perf_counter() - started
        if all(b.failed == b.trials for b in summary.baselines.values()):
            raise AllTrialsFailed(summary)
        _after_search(config, setup, ctx, sweep, grid, summary, interrupts, verbose)
        summary.wall_seconds = time.perf_counter() - started
        _log_counts(setup.tracker, summary)
        interrupts.check()
    return summary
