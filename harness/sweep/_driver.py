"""A sweep: one Ray Tune Tuner over every baseline of an experiment, Optuna proposing, ASHA stopping.

Wiring follows NOTES-ray-optuna-mlflow.md: absolute paths resolved in the driver; the MLflow
experiment and the sweep's parent run created before the first trial; metric and mode set in
TuneConfig only; `with_resources(with_parameters(...))` in that order; ASHA-stopped trials told
to Optuna as pruned; trial runs closed by a driver-side callback. With `search.reproducible`,
suggestions come in batches of `max_concurrent` and rungs are decided synchronously.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import optuna
import ray
import rich
from ray import tune
from ray.tune.search import Searcher

from harness import tracking
from harness.config import ExperimentConfig, ResourcesSpec, SearchSpace, search_space_path
from harness.data.prepare import PreparedData
from harness.errors import InputError
from harness.experiment import set_up
from harness.floor_runs import track_floors
from harness.metrics import ranking_key
from harness.retrain import EnsembleOutcome, Winner, retrain_winners
from harness.search import (
    DONE_KEY,
    EPOCH_KEY,
    PerBaselineScheduler,
    PerBaselineSearcher,
    batch_brackets,
    batched,
    recipe_start_point,
    start_points,
    study_name,
)
from harness.server import check_reachable
from harness.studies import plot_study, warm_start_points
from harness.trial import BaselinePlan, CloseTrialRuns, RunLink, SweepContext, run_trial

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


class TrialLines(tune.Callback):
    """One console line per trial start and end, instead of Tune's per-trial result tables.

    It prints through rich's global console, looked up at each call: Tune pickles its callbacks.
    """

    def __init__(self, metric: str, scheduler: str) -> None:
        self._metric = metric
        self._scheduler = scheduler

    def on_trial_start(self, iteration: int, trials: list, trial: object, **info: object) -> None:
        epoch = (trial.last_result or {}).get(EPOCH_KEY)
        if epoch:
            # A trial that waited at a rung (reproducible sweeps) starts again from its checkpoint.
            rich.get_console().print(
                f"[dim]resume[/] {trial.config['baseline']:<9} {trial.trial_id}  after epoch {epoch}"
            )
            return
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items() if k != "baseline")
        rich.get_console().print(f"[dim]start[/] {trial.config['baseline']:<10} {trial.trial_id}  {params}")

    def on_trial_complete(self, iteration: int, trials: list, trial: object, **info: object) -> None:
        last = trial.last_result or {}
        how = "finished" if last.get(DONE_KEY) else f"[yellow]stopped by {self._scheduler}[/]"
        epoch = last.get(EPOCH_KEY, 0)
        rich.get_console().print(
            f"[green]end[/]   {trial.config['baseline']:<10} {trial.trial_id}  {how} at epoch {epoch}, "
            f"best {self._metric} {last.get('objective', float('nan')):.3f}"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: object, **info: object) -> None:
        error = str(trial.get_error() or "").strip().splitlines()
        rich.get_console().print(
            f"[red]FAILED[/] {trial.config['baseline']:<10} {trial.trial_id}  {error[-1] if error else ''}",
            highlight=False,
        )

    def on_trial_recover(self, iteration: int, trials: list, trial: object, **info: object) -> None:
        rich.get_console().print(
            f"[yellow]retry[/] {trial.config['baseline']:<10} {trial.trial_id}  "
            f"after failure {trial.run_metadata.num_failures}"
        )


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


SWEEP_RECORD = "harness-sweep.json"
STATE_SYNC_SECONDS = 2
LOST = "lost_trial"  # run_type of a trial the killed driver started but never saved


def _tune_trial_ids(folder: Path) -> set[str]:
    """Return the ids of the trials in the newest experiment state Tune saved in `folder`."""
    state = max(folder.glob("experiment_state-*.json"))
    return {json.loads(trial)["trial_id"] for trial, _ in json.loads(state.read_text())["trial_data"]}


def _set_aside_lost_trials(tracker: tracking.Tracker, experiment_id: str, parent: str, folder: Path) -> list[str]:
    """Close the runs of trials a killed driver started after its last saved state; returns notes.

    Tune restores only the trials in that state and suggests the lost points again as new
    trials, so their old runs are ended KILLED and retyped, keeping one run per trial.
    """
    known = _tune_trial_ids(folder)
    notes = []
    for run in tracker.child_runs(experiment_id, parent, "trial"):
        trial_id = run.data.tags[tracking.TRIAL_ID]
        if trial_id not in known:
            tracker.finish(
                run.info.run_id, tracking.KILLED, {tracking.RUN_TYPE: LOST, tracking.STOPPED_BY: "driver_lost"}
            )
            notes.append(
                f"trial {trial_id} started after the killed driver last saved its state; its run is "
                f"set aside (run_type={LOST}) and Tune runs its point again"
            )
    return notes


def _start_ray(address: str | None) -> bool:
    """Join `address` (auto, HOST:PORT or ray://HOST:PORT) or start an embedded local Ray;
    returns True if this call started Ray."""
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


class TrialResources:
    """Tune's per-trial resource request: each baseline's own CPUs and GPU share."""

    def __init__(self, plans: dict[str, BaselinePlan]) -> None:
        self._plans = plans

    def __call__(self, config: dict) -> tune.PlacementGroupFactory:
        plan = self._plans[config["baseline"]]
        return tune.PlacementGroupFactory([{"CPU": plan.cpu, **({"GPU": plan.gpu} if plan.gpu else {})}])


def _granted(config: ExperimentConfig, spaces: dict[str, SearchSpace]) -> tuple[dict[str, ResourcesSpec], list[str]]:
    """Return what each baseline's trials ask the running Ray cluster for, and notes; raises
    InputError for a request no node of the cluster can ever meet."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    cluster_gpus = sum(n.get("GPU", 0) for n in nodes)
    if config.training.device == "cuda" and not cluster_gpus:
        raise InputError("key 'training.device' = 'cuda': the Ray cluster has no GPU (use auto or cpu)")
    granted, notes = {}, []
    for name, space in spaces.items():
        wanted = config.trial_resources(name, space.resources)
        gpu = wanted.gpu if cluster_gpus and config.training.device != "cpu" else 0.0
        if wanted.gpu and not gpu:
            notes.append(
                f"{name}: would take {wanted.gpu:g} GPU per trial; "
                + ("training.device is cpu" if cluster_gpus else "the Ray cluster has no GPU")
                + ", so it trains on CPU"
            )
        fits = any(n.get("CPU", 0) >= wanted.cpu and n.get("GPU", 0) >= gpu for n in nodes)
        if not fits:
            biggest = max((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes)
            raise InputError(
                f"baseline {name}: a trial asks {wanted.cpu:g} CPU and {gpu:g} GPU, and the largest node of the Ray "
                f"cluster has {biggest[0]:g} CPU and {biggest[1]:g} GPU (lower resources.cpu / resources.gpu)"
            )
        granted[name] = ResourcesSpec(cpu=wanted.cpu, gpu=gpu)
    return granted, notes


def _context(
    config: ExperimentConfig,
    data: PreparedData,
    uri: str,
    experiment_id: str,
    parent: str,
    tags: dict[str, str],
    spaces: dict[str, SearchSpace],
    granted: dict[str, ResourcesSpec],
) -> SweepContext:
    pretrained = {b.name: b.pretrained for b in config.baselines}
    return SweepContext(
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        objective=config.search.metric,
        tags=tags,
        plans={
            n: BaselinePlan(fixed=s.fixed, pretrained=pretrained[n], cpu=granted[n].cpu, gpu=granted[n].gpu)
            for n, s in spaces.items()
        },
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


def stopping_scheduler(config: ExperimentConfig) -> str:
    """Return the name of what stops trials early: `halving` in a reproducible sweep, else `asha`
    (the value of the `stopped_by` tag on the runs it stops)."""
    return tracking.STOPPED_BY_HALVING if config.search.reproducible else tracking.STOPPED_BY_ASHA


def _search(
    config: ExperimentConfig,
    ctx: SweepContext,
    spaces: dict[str, SearchSpace],
    sweep: str,
    starts: dict[str, list[dict]],
) -> tuple[Searcher, PerBaselineScheduler, int | None]:
    """Return the searcher, the scheduler and Tune's cap on concurrent trials of a sweep."""
    search = config.search
    searcher = PerBaselineSearcher(
        spaces,
        metric="objective",
        mode=search.mode,
        trials=search.trials,
        sampler=search.sampler,
        seed=search.seed,
        starts=starts,
        storage=config.resolved_optuna_storage(),
        study_prefix=f"{config.name}/{sweep}",
        metric_name=f"best_{search.metric}",
        link=RunLink(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id),
    )
    rungs = dict(max_t=search.max_epochs, grace_period=search.grace_period, reduction_factor=search.reduction_factor)
    if not search.reproducible:
        return searcher, PerBaselineScheduler(**rungs), search.max_concurrent
    batch = search.max_concurrent  # the config requires it with reproducible
    brackets = batch_brackets(list(spaces), search.trials, batch)
    return batched(searcher, batch), PerBaselineScheduler(**rungs, brackets=brackets), None


def _tuner(
    config: ExperimentConfig,
    ctx: SweepContext,
    spaces: dict[str, SearchSpace],
    storage: Path,
    sweep: str,
    starts: dict[str, list[dict]],
    callbacks: list[tune.Callback],
) -> tune.Tuner:
    search_alg, scheduler, max_concurrent = _search(config, ctx, spaces, sweep, starts)
    return tune.Tuner(
        _trainable(ctx),
        tune_config=tune.TuneConfig(
            metric="objective",
            mode=config.search.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=config.search.trials * len(spaces),
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep,
            storage_path=str(storage),
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            # Tune copies its experiment state to storage every 5 minutes by default; a driver
            # killed in between would forget every trial started since.
            sync_config=tune.SyncConfig(sync_period=STATE_SYNC_SECONDS),
            failure_config=tune.FailureConfig(max_failures=config.search.max_failures),
            verbose=0,
        ),
    )


def _trainable(ctx: SweepContext):
    # with_resources(with_parameters(...)), in that order: the reverse silently lost GPUs (ray#29235).
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), TrialResources(ctx.plans))


def config_fingerprint(config: ExperimentConfig) -> str:
    """Return a hash of everything in the experiment file that shapes a sweep's trials."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()


def space_fingerprints(config: ExperimentConfig) -> dict[str, str]:
    """Return a hash of each baseline's search-space file as `config` read it, by the file's path."""
    return {
        str(search_space_path(b.name)): hashlib.sha256(config.space_file(b.name).model_dump_json().encode()).hexdigest()
        for b in config.baselines
    }


def check_resumable(config: ExperimentConfig, record: dict, sweep: str) -> None:
    """Raise InputError unless `config` and its search-space files are those `sweep` started with
    (its `record`): Tune would continue the old studies on a changed space without a word."""
    if record["fingerprint"] != config_fingerprint(config):
        raise InputError(
            f"--resume: {config.name}'s experiment file changed since {sweep} started; resume with the "
            "same file and options, or start a new sweep"
        )
    # A sweep recorded before search spaces were fingerprinted has no "spaces": nothing to compare.
    now = space_fingerprints(config)
    changed = sorted(path for path, digest in record.get("spaces", {}).items() if now.get(path) != digest)
    if changed:
        raise InputError(
            f"--resume: search space file {changed[0]} changed since {sweep} started; restore it, or start a new sweep"
        )


def _interrupted_sweep(config: ExperimentConfig, storage: Path) -> tuple[Path, dict]:
    """Return the folder and record of the newest sweep of `config` in `storage` that Tune can restore."""
    candidates = sorted(storage.glob(f"sweep-*/{SWEEP_RECORD}"), reverse=True) if storage.is_dir() else []
    for record_path in candidates:
        if tune.Tuner.can_restore(str(record_path.parent)):
            record = json.loads(record_path.read_text())
            check_resumable(config, record, record_path.parent.name)
            return record_path.parent, record
    raise InputError(f"--resume: no sweep of {config.name!r} to resume in {storage}")


def _winners(
    grid: tune.ResultGrid, tracker: tracking.Tracker, experiment_id: str, parent: str, mode: str
) -> list[Winner]:
    """Return each baseline's best trial among those that ended by themselves (not stopped, not failed)."""
    finished: dict[str, list[tune.Result]] = {}
    for result in grid:
        if result.error is None and (result.metrics or {}).get(DONE_KEY):
            finished.setdefault(result.config["baseline"], []).append(result)
    best = {
        name: min(
            results,
            key=lambda r: ranking_key(
                r.metrics["objective"], r.metrics["best_val_loss"], r.metrics["trial_id"], minimise=mode == "min"
            ),
        )
        for name, results in finished.items()
    }
    winners = []
    for name, result in best.items():
        trial_id = result.metrics["trial_id"]
        run_id = tracker.find_trial_run(experiment_id, parent, trial_id)
        if run_id is not None:
            point = {k: v for k, v in result.config.items() if k != "baseline"}
            winners.append(Winner(baseline=name, trial_id=trial_id, run_id=run_id, point=point))
    return winners


def _log_study_plots(
    config: ExperimentConfig, tracker: tracking.Tracker, parent: str, sweep: str, names: list[str]
) -> list[str]:
    """Log each baseline's optimisation-history and importance plots to the parent run; returns notes."""
    notes = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            files, skipped = plot_study(
                config.resolved_optuna_storage(), study_name(f"{config.name}/{sweep}", name), Path(folder)
            )
            notes += skipped
            for file in files:
                tracker.log_file(parent, file, "optuna")
    return notes


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
    uri = config.resolved_tracking_uri()
    check_reachable(uri)
    spaces = {b.name: config.baseline_space(b.name) for b in config.baselines}
    storage = config.resolved_storage_path()
    previous = _interrupted_sweep(config, storage) if resume else None
    # Tune saves the experiment's state every few seconds; a driver killed in between reruns
    # only what finished in those seconds (and a finished trial just reports again).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(STATE_SYNC_SECONDS))
    # That frequency is deliberate; Tune would otherwise warn about it at every trial checkpoint.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started_ray = _start_ray(address)
    try:
        granted, resource_notes = _granted(config, spaces)
        setup = set_up(config, show_progress=verbose)
        data, tracker, experiment_id, tags = setup.data, setup.tracker, setup.experiment_id, setup.tags
        if previous is not None:
            folder, record = previous
            sweep, parent = folder.name, record["parent_run_id"]
            if record["split_hash"] != data.split_hash:
                raise InputError(
                    f"--resume: the data now gives split {data.split_hash[:12]}, "
                    f"the sweep ran on {record['split_hash'][:12]}"
                )
            tracker.reopen(parent)
            tracker.set_tags(parent, {"resumed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            start_notes = _set_aside_lost_trials(tracker, experiment_id, parent, folder)
        else:
            sweep = f"sweep-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
            warm, start_notes = {}, []
            if config.search.warm_start is not None:
                warm, start_notes = warm_start_points(
                    config.resolved_optuna_storage(),
                    config.name,
                    f"{config.name}/{sweep}",
                    config.search.warm_start.sweep,
                    spaces,
                    top=config.search.warm_start.top,
                    mode=config.search.mode,
                )
            parent = tracker.start_run(
                experiment_id,
                name=sweep,
                tags={**tags, tracking.RUN_TYPE: "sweep", "ray_storage": str(storage / sweep)},
                params=_sweep_params(config, spaces, data, granted),
            )
            tracker.log_file(parent, data.split_path, "split")
            (storage / sweep).mkdir(parents=True, exist_ok=True)
            (storage / sweep / SWEEP_RECORD).write_text(
                json.dumps(
                    {
                        "parent_run_id": parent,
                        "experiment_id": experiment_id,
                        "tracking_uri": uri,
                        "split_hash": data.split_hash,
                        "fingerprint": config_fingerprint(config),
                        "spaces": space_fingerprints(config),
                    },
                    indent=2,
                )
            )
        summary = SweepSummary(
            experiment=config.name,
            tracking_uri=uri,
            parent_run_id=parent,
            split_hash=data.split_hash,
            wall_seconds=0.0,
            storage=storage / sweep,
            resumed=previous is not None,
            notes=setup.notes + resource_notes + start_notes + search_notes(config, spaces),
        )
        ctx = _context(config, data, uri, experiment_id, parent, tags, spaces, granted)
        try:
            if previous is not None:
                tuner = tune.Tuner.restore(str(storage / sweep), trainable=_trainable(ctx), resume_unfinished=True)
            else:
                stopper = stopping_scheduler(config)
                callbacks: list[tune.Callback] = [CloseTrialRuns(uri, experiment_id, parent, tags, stopper)]
                if verbose:
                    callbacks.append(TrialLines(config.search.metric, stopper))
                starts = {n: start_points(s, warm.get(n, [])) for n, s in spaces.items()}
                tuner = _tuner(config, ctx, spaces, storage, sweep, starts, callbacks)
            grid = tuner.fit()
            summary.baselines = _outcomes(grid, list(spaces))
            summary.notes += _log_study_plots(config, tracker, parent, sweep, list(spaces))
            if config.search.retrain == "all_folds" and config.protocol.test_fraction > 0:
                winners = _winners(grid, tracker, experiment_id, parent, config.search.mode)
                on_fold = (
                    (
                        lambda b, k, acc: rich.get_console().print(
                            f"[green]fold[/]  {b:<10} fold {k} retrained, test accuracy {acc:.3f}"
                        )
                    )
                    if verbose
                    else None
                )
                summary.ensembles, retrain_notes = retrain_winners(ctx, winners, config.protocol.folds, on_fold)
                summary.notes += retrain_notes
            logged = {r.data.tags[tracking.BASELINE] for r in tracker.child_runs(experiment_id, parent, "floor")}
            summary.floors = track_floors(
                [f for f in config.floors if f not in logged],
                data,
                tracker,
                experiment_id,
                parent,
                tags,
                search_fold=config.protocol.search_fold,
                objective=config.search.metric,
                seed=config.protocol.seed,
            )
        except KeyboardInterrupt:
            tracker.finish(parent, tracking.KILLED)
            raise
        except BaseException as exc:
            tracker.finish(parent, tracking.FAILED, {tracking.ERROR: repr(exc)[-4000:]})
            raise
    finally:
        if started_ray:
            ray.shutdown()
    summary.wall_seconds = time.perf_counter() - started
    counts = Counter()
    for outcome in summary.baselines.values():
        counts.update(vars(outcome))
    tracker.log_metrics(
        parent, {f"sweep_{k}": v for k, v in counts.items()} | {"wall_seconds": summary.wall_seconds}, step=0
    )
    tracker.finish(parent, tracking.FINISHED)
    return summary


def _sweep_params(
    config: ExperimentConfig, spaces: dict[str, SearchSpace], data: PreparedData, granted: dict[str, ResourcesSpec]
) -> dict[str, object]:
    return {
        "baselines": ",".join(spaces),
        "trials_per_baseline": config.search.trials,
        "max_epochs": config.search.max_epochs,
        "grace_period": config.search.grace_period,
        "reduction_factor": config.search.reduction_factor,
        "objective": config.search.metric,
        "sampler": config.search.sampler,
        "sampler_seed": config.search.seed,
        "folds": config.protocol.folds,
        "test_fraction": config.protocol.test_fraction,
        "split_seed": config.protocol.seed,
        "search_fold": config.protocol.search_fold,
        "patients": data.patients,
        "images": data.rows,
        "max_concurrent": config.search.max_concurrent or "unlimited",
        "max_failures": config.search.max_failures,
        "optuna_storage": config.resolved_optuna_storage(),
        "retrain": config.search.retrain,
        "reproducible": config.search.reproducible,
        **{f"resources_{n}": f"cpu={r.cpu:g},gpu={r.gpu:g}" for n, r in granted.items()},
    }
