"""Each baseline's winner: the best of its trials that ended by themselves, read from Tune's
results, with the MLflow run and the sampled point the fold retrain and the registry start from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ray import tune

from harness.metrics import ranking_key

from ._keys import DONE_KEY, trial_point
from ._trial import RunLink


@dataclass(frozen=True)
class Winner:
    """The best finished trial of one baseline: its Tune id, MLflow run, sampled point and objective."""

    baseline: str
    trial_id: str
    run_id: str
    point: dict[str, Any]
    objective: float


def winners(grid: tune.ResultGrid, link: RunLink, mode: str) -> list[Winner]:
    """Return each baseline's best trial among those that ended by themselves (not stopped, not failed)."""
    finished: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for result in grid_results(grid):
        if result.error is None and result.metrics and result.metrics.get(DONE_KEY) and result.config:
            finished.setdefault(result.config["baseline"], []).append((result.config, result.metrics))

    def rank(ended: tuple[dict[str, Any], dict[str, Any]]) -> tuple:
        m = ended[1]
        return ranking_key(m["objective"], m["sel_val_loss"], m["trial_id"], minimise=mode == "min")

    chosen = []
    for name, ended in sorted(finished.items()):  # by name: the order trials ended in varies
        config, metrics = min(ended, key=rank)
        trial_id = metrics["trial_id"]
        run_id = link(trial_id, metrics)
        if run_id is not None:
            chosen.append(Winner(name, trial_id, run_id, trial_point(config), float(metrics["objective"])))
    return chosen


def grid_results(grid: tune.ResultGrid) -> list[tune.Result]:
    """Return every trial's Result of `grid` (a ResultGrid is indexed, not declared iterable)."""
    return [grid[i] for i in range(len(grid))]


def trial_configs(grid: tune.ResultGrid) -> list[tuple[tune.Result, dict[str, Any] | None]]:
    """Return every trial's Result of `grid` with the trial's config (None for a trial Tune never
    started). A Result takes its config from the trial's last result, so a trial that failed before
    its first (a worker killed as it started) has none there: Tune's saved state has it."""
    results = grid_results(grid)
    if all(result.config for result in results):
        return [(result, result.config) for result in results]
    # Reading the state again would repeat Tune's warning that those trials have no metrics.
    analysis_log = logging.getLogger(tune.ExperimentAnalysis.__module__)
    level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    try:
        trials = tune.ExperimentAnalysis(grid.experiment_path).trials
    finally:
        analysis_log.setLevel(level)
    started = {trial.path: trial.config for trial in trials}
    return [(result, result.config or started.get(result.path)) for result in results]
