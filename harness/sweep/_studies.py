"""The Optuna studies a sweep keeps: warm-start points from an earlier sweep, the plots of each
study (optimisation history, parameter importances) for the sweep's parent run, and a check that
every study holds what MLflow records."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from harness import tracking
from harness.config import SearchSpace
from harness.errors import InputError
from harness.figures import pyplot

from ._search import MLFLOW_RUN_ATTR, RAY_TRIAL_ATTR, optuna_storage, study_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _previous_prefix(storage: str, experiment: str, current: str, wanted: str) -> str | None:
    """Return the study prefix of the sweep `wanted` ('latest' = the newest before `current`)."""
    prefixes = sorted(
        {
            name.rsplit("/", 1)[0]
            for name in optuna.get_all_study_names(optuna_storage(storage))
            if name.startswith(f"{experiment}/")
        }
        - {current}
    )
    if wanted == "latest":
        return prefixes[-1] if prefixes else None
    prefix = f"{experiment}/{wanted}"
    return prefix if prefix in prefixes else None


def _value(trial: optuna.trial.FrozenTrial) -> float:
    """Return the objective value of a completed trial that has one."""
    assert trial.value is not None
    return trial.value


def warm_start_points(
    storage: str, experiment: str, current: str, wanted: str, spaces: dict[str, SearchSpace], *, top: int, mode: str
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Return, per baseline, the `top` best completed points of an earlier sweep that lie inside
    this sweep's space, and notes saying where they came from."""
    prefix = _previous_prefix(storage, experiment, current, wanted)
    if prefix is None:
        raise InputError(f"key 'search.warm_start.sweep' = {wanted!r}: no earlier sweep of {experiment!r} in {storage}")
    points, notes = {}, []
    names = set(optuna.get_all_study_names(optuna_storage(storage)))
    for baseline, space in spaces.items():
        name = study_name(prefix, baseline)
        if name not in names:
            notes.append(f"{baseline}: {prefix} did not search it; no warm start")
            continue
        study = optuna.load_study(study_name=name, storage=optuna_storage(storage))
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
        done.sort(key=_value, reverse=mode == "max")
        fits = [
            t.params
            for t in done
            if set(t.params) == set(space.search) and all(space.search[k].contains(v) for k, v in t.params.items())
        ]
        points[baseline] = fits[:top]
        notes.append(f"{baseline}: warm start from {len(points[baseline])} best point(s) of {prefix}")
    return points, notes


# A study's user attribute saying why it has no parameter importances: optuna-dashboard draws an
# empty importance pane without a word, and shows a study's user attributes on its front page.
IMPORTANCE_ATTR = "param_importance"


def plot_study(storage: str, name: str, folder: Path) -> tuple[list[Path], list[str]]:
    """Write the optimisation history and parameter-importance plots of one study as PNGs;
    returns the files and why a plot was left out. Importances weigh completed trials only (not
    those stopped early): a study with too few has no importance plot, and says so itself
    (IMPORTANCE_ATTR)."""
    plt = pyplot()  # before optuna's plotting module imports matplotlib with the default backend
    from optuna.visualization import matplotlib as optuna_plots

    study = optuna.load_study(study_name=name, storage=optuna_storage(storage))
    stem = name.rsplit("/", 1)[-1]
    files, skipped = [], []
    states = Counter(trial.state for trial in study.get_trials(deepcopy=False))
    complete, stopped = states[TrialState.COMPLETE], states[TrialState.PRUNED]
    plots: dict[str, Callable[[optuna.Study], Axes]] = {
        "history": optuna_plots.plot_optimization_history,
        "importance": optuna_plots.plot_param_importances,
    }
    for kind, plot in plots.items():
        needed = 1 if kind == "history" else 2
        if complete < needed:
            why = f"needs {needed} completed trials, has {complete} (the {stopped} stopped early do not count)"
            skipped.append(f"{stem}: {kind} plot {why}")
            if kind == "importance":
                study.set_user_attr(IMPORTANCE_ATTR, f"not computed: {why}")
            continue
        with warnings.catch_warnings():
            # Optuna marks its matplotlib plots experimental at every call.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as exc:
                skipped.append(f"{stem}: no {kind} plot ({exc})")
                continue
        figure = cast("Figure", axes.figure)  # optuna draws on a figure of its own, not a subfigure
        figure.set_size_inches(7, 4)
        axes.set_title(f"{stem}: {axes.get_title()}")
        path = folder / f"{stem}_{kind}.png"
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        files.append(path)
        if kind == "importance":  # replaces a "not computed" an earlier call (before a resume) left
            study.set_user_attr(IMPORTANCE_ATTR, f"drawn: {path.name} on the sweep's MLflow run")
    return files, skipped


# MLflow keeps milliseconds, Optuna microseconds: a run opened within the same millisecond as its
# Optuna trial started reads up to 1 ms earlier.
MLFLOW_CLOCK_S = 0.001


def _time_disagreements(trial: optuna.trial.FrozenTrial, run: Any) -> list[str]:
    """Return how one Optuna trial's times break the order of events they record: the driver marks
    the trial started as Tune starts its process, which then opens the run (never before), and tells
    its end after that run opened. Checked as order, not as durations, which a loaded machine
    stretches (tests/sweep/test_reproducible.py checks the order across trials)."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return [f"times: optuna {trial.datetime_start} to {trial.datetime_complete}"]
    # Optuna keeps local times without a zone; this reads them on the driver's clock and zone.
    opened = run.info.start_time / 1000
    lines = []
    if opened < trial.datetime_start.timestamp() - MLFLOW_CLOCK_S:
        lines.append(f"start: optuna {trial.datetime_start}, after the mlflow run opened")
    if trial.datetime_complete.timestamp() < opened - MLFLOW_CLOCK_S:
        lines.append(f"end: optuna {trial.datetime_complete}, before the mlflow run opened")
    return lines


def _disagreements(trial: optuna.trial.FrozenTrial, client: Any) -> list[str]:
    """Return how one Optuna trial differs from the MLflow run it names (nothing when they agree)."""
    run_id = trial.user_attrs.get(MLFLOW_RUN_ATTR)
    if run_id is None:
        return ["no mlflow_run_id"]
    run = client.get_run(run_id)
    history = {m.step: m.value for m in client.get_metric_history(run_id, "objective")}
    # A trial stopped early ends FINISHED (outcome stopped_early); stores older than the outcome
    # tag ended it KILLED.
    states = {"completed": TrialState.COMPLETE, "stopped_early": TrialState.PRUNED, "failed": TrialState.FAIL}
    legacy = {tracking.FINISHED: "completed", tracking.KILLED: "stopped_early", tracking.FAILED: "failed"}
    expected = states.get(run.data.tags.get(tracking.OUTCOME) or legacy.get(run.info.status, ""))
    facts = [
        ("state", trial.state, expected),
        ("value", trial.value, history[max(history)] if history and expected != TrialState.FAIL else None),
        ("intermediate values", trial.intermediate_values, history),
        ("ray_trial_id", trial.user_attrs.get(RAY_TRIAL_ATTR), run.data.tags.get(tracking.TRIAL_ID)),
        ("optuna_trial_number tag", str(trial.number), run.data.tags.get(tracking.OPTUNA_TRIAL)),
    ]
    lines = [f"{what}: optuna {mine!r}, mlflow {theirs!r}" for what, mine, theirs in facts if mine != theirs]
    return lines + _time_disagreements(trial, run)


def mlflow_disagreements(storage: str, tracking_uri: str, experiment: str) -> tuple[int, list[str]]:
    """Compare every trial in the Optuna studies of `experiment`'s sweeps with the MLflow run it
    names: its state, its value against the run's last `objective`, its intermediate values against
    the run's per-epoch `objective` series, the links both ways, and its start and end times
    (within the tolerances above, in a sweep never interrupted); returns the trials compared and
    one line per disagreement."""
    client = MlflowClient(tracking_uri)
    compared, lines = 0, []
    for name in sorted(optuna.get_all_study_names(optuna_storage(storage))):
        if not name.startswith(f"{experiment}/"):
            continue
        for trial in optuna.load_study(study_name=name, storage=optuna_storage(storage)).get_trials(deepcopy=False):
            compared += 1
            lines += [f"{name} trial {trial.number}: {line}" for line in _disagreements(trial, client)]
    return compared, lines
