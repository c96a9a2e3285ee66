"""A sweep: one Ray Tune Tuner over every baseline of an experiment, Optuna proposing, ASHA
stopping; then each baseline's winner retrained on every fold and ensembled, and the floors fitted
on the same folds.

`run_sweep` runs three named steps inside the sweep's parent run: open (or resume) the sweep,
search, and after the search. Paths are resolved to absolute ones in the driver, and the MLflow
experiment and parent run exist before the first trial (NOTES-ray-optuna-mlflow.md).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import optuna
import ray
from ray import tune

from harness import tracking
from harness.config import ExperimentConfig, ResourcesSpec
from harness.errors import InputError
from harness.experiment import ExperimentSetup, set_up
from harness.server import check_reachable

from ._floors import track_floors
from ._keys import DONE_KEY
from ._lines import TrialLines, fold_line
from ._record import interrupted_sweep, set_aside_lost_trials, write_record
from ._retrain import EnsembleOutcome, retrain_winners, winners
from ._search import start_points, study_name
from ._studies import plot_study, warm_start_points
from ._trial import CloseTrialRuns, SweepContext, sweep_context
from ._tuner import STATE_SYNC_SECONDS, granted_resources, new_tuner, restored_tuner, search_notes, stopping_scheduler

RunType = tracking.RunType


@dataclass
class BaselineOutcome:
    """Trial counts of one baseline in a finished sweep."""

    trials: int = 0
    finished: int = 0
    stopped_early: int = 0
    failed: int = 0


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
    # "local" rather than None: a killed driver can leave a stale cluster address behind, which a
    # plain ray.init() would try to join.
    ray.init(address=address or "local", include_dashboard=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def _tune_environment() -> None:
    # Tune saves the experiment's state every few seconds; a driver killed in between reruns
    # only what finished in those seconds (and a finished trial just reports again).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(STATE_SYNC_SECONDS))
    # That frequency is deliberate; Tune would otherwise warn about it at every trial checkpoint.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


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
        "reproducible": search.reproducible,
        **{f"resources_{n}": f"cpu={r.cpu:g},gpu={r.gpu:g}" for n, r in granted.items()},
    }


def _start(config: ExperimentConfig, setup: ExperimentSetup, granted: dict[str, ResourcesSpec]) -> _Sweep:
    """Return a new sweep with its parent run started, after every check that can refuse it."""
    folder = config.resolved_storage_path() / f"sweep-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    spaces = config.baseline_spaces()
    warm, notes = {}, []
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
    parent = setup.tracker.start_run(
        setup.experiment_id,
        name=folder.name,
        run_type=RunType.SWEEP,
        tags={**setup.tags, "ray_storage": str(folder)},
        params=_sweep_params(config, setup, granted),
    )
    starts = {name: start_points(space, warm.get(name, [])) for name, space in spaces.items()}
    return _Sweep(folder, parent, resumed=False, starts=starts, notes=notes)


def _reopen(setup: ExperimentSetup, folder: Path, record: dict) -> _Sweep:
    """Return the interrupted sweep in `folder` with its parent run RUNNING again."""
    if record["split_hash"] != setup.data.split_hash:
        raise InputError(
            f"--resume: the data now gives split {setup.data.split_hash[:12]}, "
            f"the sweep ran on {record['split_hash'][:12]}"
        )
    parent = record["parent_run_id"]
    setup.tracker.reopen(parent)
    setup.tracker.set_tags(parent, {"resumed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return _Sweep(folder, parent, resumed=True)


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
    with setup.tracker.ending(sweep.parent):
        if sweep.resumed:
            sweep.notes += set_aside_lost_trials(setup.tracker, setup.experiment_id, sweep.parent, sweep.folder)
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


def _search(config: ExperimentConfig, ctx: SweepContext, sweep: _Sweep, verbose: bool) -> tune.ResultGrid:
    """Run the sweep's Tuner (a restored one when resuming) until every trial has ended; returns
    its results."""
    if sweep.resumed:
        return restored_tuner(ctx, sweep.folder).fit()
    stopper = stopping_scheduler(config)
    callbacks: list[tune.Callback] = [
        CloseTrialRuns(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, ctx.tags, stopper)
    ]
    if verbose:
        callbacks.append(TrialLines(config.search.metric, stopper))
    return new_tuner(config, ctx, sweep.folder, sweep.starts, callbacks).fit()


def _outcomes(grid: tune.ResultGrid, names: list[str]) -> dict[str, BaselineOutcome]:
    outcomes = {name: BaselineOutcome() for name in names}
    for result in grid:
        outcome = outcomes[result.config["baseline"]]
        outcome.trials += 1
        if result.error is not None:
            outcome.failed += 1
        elif (result.metrics or {}).get(DONE_KEY):
            outcome.finished += 1
        else:
            outcome.stopped_early += 1
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
    verbose: bool,
) -> None:
    """Log the studies' plots, retrain each winner on every fold and ensemble the folds, and fit the
    floors not logged yet; records what they did in `summary`."""
    summary.notes += _log_study_plots(config, setup.tracker, sweep)
    if config.search.retrain == "all_folds" and config.protocol.test_fraction > 0:
        chosen = winners(grid, setup.tracker, ctx, config.search.mode)
        summary.ensembles, notes = retrain_winners(ctx, chosen, config.protocol.folds, fold_line if verbose else None)
        summary.notes += notes
    floors = setup.tracker.child_runs(setup.experiment_id, sweep.parent, RunType.FLOOR)
    logged = {r.data.tags[tracking.BASELINE] for r in floors}
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
    counts = Counter()
    for outcome in summary.baselines.values():
        counts.update(vars(outcome))
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
    previous = interrupted_sweep(config, config.resolved_storage_path()) if resume else None
    _tune_environment()
    with _ray(address):
        granted, resource_notes = granted_resources(config)
        setup = set_up(config, show_progress=verbose)
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
            grid = _search(config, ctx, sweep, verbose)
            summary.baselines = _outcomes(grid, [b.name for b in config.baselines])
            _after_search(config, setup, ctx, sweep, grid, summary, verbose)
            summary.wall_seconds = time.perf_counter() - started
            _log_counts(setup.tracker, summary)
    return summary
