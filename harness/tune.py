"""A sweep: one Ray Tune Tuner over every baseline of an experiment, Optuna proposing, ASHA stopping.

Wiring follows NOTES-ray-optuna-mlflow.md: absolute paths resolved in the driver; the MLflow
experiment and the sweep's parent run created before the first trial; metric and mode set in
TuneConfig only; `with_resources(with_parameters(...))` in that order; ASHA-stopped trials told
to Optuna as pruned; trial runs closed by a driver-side callback.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import optuna
import ray
from ray import tune
import rich

from harness import tracking
from harness.config import ExperimentConfig, SearchSpace, load_search_space
from harness.data.prepare import PreparedData
from harness.experiment import set_up
from harness.search import DONE_KEY, PerBaselineASHA, PerBaselineSearcher, recipe_start_point
from harness.trial import BaselinePlan, CloseTrialRuns, SweepContext, run_trial

TPE_STARTUP_TRIALS = 10  # optuna.samplers.TPESampler's n_startup_trials default


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
    baselines: dict[str, BaselineOutcome] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def stopped_early(self) -> int:
        """Return how many trials ASHA stopped, over all baselines."""
        return sum(b.stopped_early for b in self.baselines.values())


class TrialLines(tune.Callback):
    """One console line per trial start and end, instead of Tune's per-trial result tables.

    It prints through rich's global console, looked up at each call: Tune pickles its callbacks.
    """

    def __init__(self, metric: str) -> None:
        self._metric = metric

    def on_trial_start(self, iteration: int, trials: list, trial: object, **info: object) -> None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items() if k != "baseline")
        rich.get_console().print(f"[dim]start[/] {trial.config['baseline']:<10} {trial.trial_id}  {params}")

    def on_trial_complete(self, iteration: int, trials: list, trial: object, **info: object) -> None:
        last = trial.last_result or {}
        how = "finished" if last.get(DONE_KEY) else "[yellow]stopped by ASHA[/]"
        epoch = last.get("training_iteration", 0)
        rich.get_console().print(
            f"[green]end[/]   {trial.config['baseline']:<10} {trial.trial_id}  {how} at epoch {epoch}, "
            f"best {self._metric} {last.get('objective', float('nan')):.3f}"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: object, **info: object) -> None:
        rich.get_console().print(f"[red]FAILED[/] {trial.config['baseline']:<10} {trial.trial_id}  (error logged to MLflow)")


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _start_ray(address: str | None) -> bool:
    """Join `address` or start an embedded local Ray; returns True if this call started Ray."""
    if ray.is_initialized():
        return False
    # "local" rather than None: a killed driver can leave a stale cluster address behind, which a
    # plain ray.init() would try to join.
    ray.init(address=address or "local", include_dashboard=False, configure_logging=False)
    return True


def search_notes(config: ExperimentConfig, spaces: dict[str, SearchSpace]) -> list[str]:
    """Return what a user should know about how this search will behave."""
    notes = []
    if config.search.sampler == "tpe" and config.search.trials <= TPE_STARTUP_TRIALS:
        notes.append(
            f"{config.search.trials} trials per baseline: TPE samples at random for its first "
            f"{TPE_STARTUP_TRIALS}, so this sweep is a random search (plus the recipe point where it fits)"
        )
    for name, space in spaces.items():
        notes.append(f"{name}: {recipe_start_point(space)[1]}")
    return notes


def _context(config: ExperimentConfig, data: PreparedData, uri: str, experiment_id: str, parent: str,
             tags: dict[str, str], spaces: dict[str, SearchSpace]) -> SweepContext:
    pretrained = {b.name: b.pretrained for b in config.baselines}
    return SweepContext(
        tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent, objective=config.search.metric,
        tags=tags, plans={n: BaselinePlan(fixed=s.fixed, pretrained=pretrained[n]) for n, s in spaces.items()},
        manifest_path=data.manifest_path, split_path=data.split_path, cache_path=data.cache_path,
        mask_cache_path=data.mask_cache_path,
        class_names=data.class_names, fold=config.protocol.search_fold, max_epochs=config.search.max_epochs,
        patience=config.training.patience, seed=config.protocol.seed, device=config.training.device,
        threads=max(1, int(config.resources.cpu)), eval_batch_size=config.training.eval_batch_size,
    )


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


def _tuner(config: ExperimentConfig, ctx: SweepContext, spaces: dict[str, SearchSpace], output_dir: Path,
           stamp: str, callbacks: list[tune.Callback]) -> tune.Tuner:
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, ctx=ctx), {"cpu": config.resources.cpu, "gpu": config.resources.gpu}
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric="objective",
            mode=config.search.mode,
            search_alg=PerBaselineSearcher(
                spaces, metric="objective", mode=config.search.mode, trials=config.search.trials,
                sampler=config.search.sampler, seed=config.search.seed,
            ),
            scheduler=PerBaselineASHA(
                max_t=config.search.max_epochs, grace_period=config.search.grace_period,
                reduction_factor=config.search.reduction_factor,
            ),
            num_samples=config.search.trials * len(spaces),
            max_concurrent_trials=config.search.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"sweep-{stamp}",
            storage_path=str(output_dir / config.name / "ray"),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def run_sweep(config: ExperimentConfig, *, address: str | None = None, verbose: bool = False) -> SweepSummary:
    """Index, split and cache the dataset, then tune every baseline of `config`; returns the summary.

    `verbose` prints progress bars and one line per trial start and end.
    """
    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spaces = {b.name: load_search_space(b.name).pinned(b.fixed) for b in config.baselines}
    setup = set_up(config, show_progress=verbose)
    data, tracker, experiment_id, tags, uri = setup.data, setup.tracker, setup.experiment_id, setup.tags, setup.tracker.uri
    output_dir = config.output_dir.resolve()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent = tracker.start_run(
        experiment_id, name=f"sweep-{stamp}", tags={**tags, tracking.RUN_TYPE: "sweep"},
        params={
            "baselines": ",".join(spaces), "trials_per_baseline": config.search.trials,
            "max_epochs": config.search.max_epochs, "grace_period": config.search.grace_period,
            "reduction_factor": config.search.reduction_factor, "objective": config.search.metric,
            "sampler": config.search.sampler, "sampler_seed": config.search.seed, "folds": config.protocol.folds,
            "test_fraction": config.protocol.test_fraction, "split_seed": config.protocol.seed,
            "search_fold": config.protocol.search_fold, "patients": data.patients, "images": data.rows,
            "cpu_per_trial": config.resources.cpu, "gpu_per_trial": config.resources.gpu,
        },
    )
    tracker.log_file(parent, data.split_path, "split")
    summary = SweepSummary(
        experiment=config.name, tracking_uri=uri, parent_run_id=parent, split_hash=data.split_hash,
        wall_seconds=0.0, notes=setup.notes + search_notes(config, spaces),
    )
    ctx = _context(config, data, uri, experiment_id, parent, tags, spaces)
    started_ray = _start_ray(address)
    try:
        callbacks: list[tune.Callback] = [CloseTrialRuns(uri, experiment_id, parent, tags)]
        if verbose:
            callbacks.append(TrialLines(config.search.metric))
        grid = _tuner(config, ctx, spaces, output_dir, stamp, callbacks).fit()
    except KeyboardInterrupt:
        tracker.finish(parent, tracking.KILLED)
        raise
    except BaseException as exc:
        tracker.finish(parent, tracking.FAILED, {tracking.ERROR: repr(exc)[-4000:]})
        raise
    finally:
        if started_ray:
            ray.shutdown()
    summary.baselines = _outcomes(grid, list(spaces))
    summary.wall_seconds = time.perf_counter() - started
    counts = Counter()
    for outcome in summary.baselines.values():
        counts.update(vars(outcome))
    tracker.log_metrics(parent, {f"sweep_{k}": v for k, v in counts.items()} | {"wall_seconds": summary.wall_seconds}, step=0)
    tracker.finish(parent, tracking.FINISHED)
    return summary
