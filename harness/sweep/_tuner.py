"""The Tuner of a sweep: what each trial asks the Ray cluster for, the per-baseline searcher and
scheduler, and the Tuner built (or restored) around the trial function.

Wiring follows NOTES-ray-optuna-mlflow.md: metric and mode set in TuneConfig only;
`with_resources(with_parameters(...))` in that order; ASHA-stopped trials told to Optuna as pruned;
trial runs closed by a driver-side callback. With `search.reproducible`, suggestions come in
batches of `max_concurrent` and rungs are decided synchronously.
"""

from __future__ import annotations

from pathlib import Path

import ray
from ray import tune
from ray.tune.search import Searcher

import baselines
from harness import tracking
from harness.config import ExperimentConfig, ResourcesSpec, SearchSpec
from harness.errors import InputError

from ._search import (
    MlflowLinks,
    PerBaselineScheduler,
    PerBaselineSearcher,
    RunLinker,
    StartStudyTrials,
    batch_brackets,
    batched,
    recipe_start_point,
)
from ._trial import SweepContext, run_trial

TPE_STARTUP_TRIALS = 10  # optuna.samplers.TPESampler's n_startup_trials default
# Tune copies its experiment state to storage every 5 minutes by default; a driver killed in
# between would forget every trial started since.
STATE_SYNC_SECONDS = 2


class TrialResources:
    """Tune's per-trial resource request: each baseline's own CPUs and GPU share."""

    def __init__(self, granted: dict[str, ResourcesSpec]) -> None:
        self._granted = granted

    def __call__(self, config: dict) -> tune.PlacementGroupFactory:
        granted = self._granted[config["baseline"]]
        return tune.PlacementGroupFactory([{"CPU": granted.cpu, **({"GPU": granted.gpu} if granted.gpu else {})}])


def _fitting_request(name: str, wanted: ResourcesSpec, gpu: float, nodes: list[dict]) -> ResourcesSpec:
    """Return what a trial of `name` gets; raises InputError when no node can ever meet it."""
    if not any(n.get("CPU", 0) >= wanted.cpu and n.get("GPU", 0) >= gpu for n in nodes):
        biggest = max((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes)
        raise InputError(
            f"baseline {name}: a trial asks {wanted.cpu:g} CPU and {gpu:g} GPU, and the largest node of the Ray "
            f"cluster has {biggest[0]:g} CPU and {biggest[1]:g} GPU (lower resources.cpu / resources.gpu)"
        )
    return ResourcesSpec(cpu=wanted.cpu, gpu=gpu)


def granted_resources(config: ExperimentConfig) -> tuple[dict[str, ResourcesSpec], list[str]]:
    """Return what each baseline's trials ask the running Ray cluster for, and notes; raises
    InputError for a request no node of the cluster can ever meet."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    cluster_gpus = sum(n.get("GPU", 0) for n in nodes)
    if config.training.device == "cuda" and not cluster_gpus:
        raise InputError("key 'training.device' = 'cuda': the Ray cluster has no GPU (use auto or cpu)")
    granted, notes = {}, []
    for name, space in config.baseline_spaces().items():
        wanted = config.trial_resources(name, space.resources)
        gpu = wanted.gpu if cluster_gpus and config.training.device != "cpu" else 0.0
        if wanted.gpu and not gpu:
            notes.append(
                f"{name}: would take {wanted.gpu:g} GPU per trial; "
                + ("training.device is cpu" if cluster_gpus else "the Ray cluster has no GPU")
                + ", so it trains on CPU"
            )
        granted[name] = _fitting_request(name, wanted, gpu, nodes)
    return granted, notes


def search_notes(config: ExperimentConfig) -> list[str]:
    """Return what a user should know about how this search will behave."""
    notes = []
    if config.search.sampler == "tpe" and config.search.trials <= TPE_STARTUP_TRIALS:
        notes.append(
            f"{config.search.trials} trials per baseline: TPE samples at random for its first "
            f"{TPE_STARTUP_TRIALS}, so this sweep is a random search (plus the recipe point where it fits)"
        )
    for name, space in config.baseline_spaces().items():
        notes.append(f"{name}: {recipe_start_point(space)[1]}")
    for entry in config.baselines:
        if baselines.info(entry.name).takes_encoder and entry.pretrained is None:
            # Legitimate as a control (random features), never as the published encoder's row.
            notes.append(f"{entry.name}: no weights file (`pretrained`): its encoder is random-initialised")
    return notes


def stopping_scheduler(config: ExperimentConfig) -> str:
    """Return the name of what stops trials early: `halving` in a reproducible sweep, else `asha`
    (the value of the `stopped_by` tag on the runs it stops)."""
    return tracking.STOPPED_BY_HALVING if config.search.reproducible else tracking.STOPPED_BY_ASHA


def searcher_of(
    config: ExperimentConfig,
    study_prefix: str,
    starts: dict[str, list[dict]],
    link: RunLinker | None = None,
    links: MlflowLinks | None = None,
) -> PerBaselineSearcher:
    """Return the per-baseline Optuna searcher of a sweep of `config` whose studies share
    `study_prefix` (bench/sweep_scale.py --study-only drives this very searcher)."""
    search = config.search
    return PerBaselineSearcher(
        config.baseline_spaces(),
        metric="objective",
        mode=search.mode,
        trials=search.trials,
        sampler=search.sampler,
        seed=search.seed,
        starts=starts,
        storage=config.resolved_optuna_storage(),
        study_prefix=study_prefix,
        metric_name=f"sel_{search.metric}",
        link=link,
        links=links,
    )


def _search(
    config: ExperimentConfig, ctx: SweepContext, study_prefix: str, starts: dict[str, list[dict]]
) -> tuple[Searcher, PerBaselineScheduler, int | None]:
    """Return the searcher, the scheduler and Tune's cap on concurrent trials of a sweep whose
    studies share `study_prefix`."""
    search, spaces = config.search, config.baseline_spaces()
    links = MlflowLinks(ctx.tracking_uri, config.name, ctx.experiment_id, ctx.parent_run_id)
    searcher = searcher_of(config, study_prefix, starts, ctx.run_link.in_tune, links)
    if not search.reproducible:
        return searcher, _scheduler(search), search.max_concurrent
    batch = search.max_concurrent
    assert batch is not None, "the config requires max_concurrent with reproducible"
    brackets = batch_brackets(list(spaces), search.trials, batch)
    return batched(searcher, batch), _scheduler(search, brackets), None


def _scheduler(search: SearchSpec, brackets: dict[str, list[int]] | None = None) -> PerBaselineScheduler:
    """Return the per-baseline rungs of `search`: ASHA's, or synchronous halving in `brackets`."""
    return PerBaselineScheduler(
        max_t=search.max_epochs,
        grace_period=search.grace_period,
        reduction_factor=search.reduction_factor,
        brackets=brackets,
    )


def _trainable(ctx: SweepContext) -> type[tune.Trainable]:
    # with_resources(with_parameters(...)), in that order: the reverse silently lost GPUs (ray#29235).
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), TrialResources(ctx.granted))


def new_tuner(
    config: ExperimentConfig,
    ctx: SweepContext,
    folder: Path,
    starts: dict[str, list[dict]],
    callbacks: list[tune.Callback],
) -> tune.Tuner:
    """Return the Tuner of a new sweep whose Tune state goes to `folder`, each study evaluating its
    `starts` first (and its trials marked started as Tune starts them)."""
    study_prefix = f"{config.name}/{folder.name}"
    search_alg, scheduler, max_concurrent = _search(config, ctx, study_prefix, starts)
    starting = StartStudyTrials(config.resolved_optuna_storage(), study_prefix)
    return tune.Tuner(
        _trainable(ctx),
        tune_config=tune.TuneConfig(
            metric="objective",
            mode=config.search.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=config.search.trials * len(config.baselines),
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=str(folder.parent),
            callbacks=[*callbacks, starting],
            # Two, not one: Tune saves its experiment state every few seconds, and the state a
            # resume reads may still name the checkpoint before the newest; keeping one would
            # have deleted it, and the resumed trial would fail three times for want of it.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            sync_config=tune.SyncConfig(sync_period=STATE_SYNC_SECONDS),
            failure_config=tune.FailureConfig(max_failures=config.search.max_failures),
            verbose=0,
        ),
    )


def restored_tuner(ctx: SweepContext, folder: Path) -> tune.Tuner:
    """Return the Tuner of the interrupted sweep in `folder`, its unfinished trials resumed."""
    return tune.Tuner.restore(str(folder), trainable=_trainable(ctx), resume_unfinished=True)
