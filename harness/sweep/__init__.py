"""The sweep: Ray Tune runs every baseline's trials (a per-baseline Optuna study proposing, ASHA or
synchronous halving stopping), then retrains each winner on every fold and ensembles the folds, and
fits the floors beside them; every run is tracked in MLflow.

The machinery lives in private modules: `_driver` (run_sweep's steps), `_tuner` (resources,
searcher, scheduler, Tuner), `_search` (per-baseline Optuna search and halving), `_trial` (what runs
in a trial, and the callback that closes its run), `_studies` (the Optuna studies), `_retrain` (the
fold retrain), `_ensemble` (logging a fold ensemble), `_floors` (the floors' runs), `_nodes` (what a
trial checks on its node), `_record` (the resume record), `_orphans` (runs a dead driver left
RUNNING), `_failures` (why a trial failed), `_lines` (console lines).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._driver import AllTrialsFailed, BaselineOutcome, SweepSummary, close_orphans, run_sweep

__all__ = ["AllTrialsFailed", "BaselineOutcome", "SweepSummary", "close_orphans", "run_sweep"]


def __getattr__(name: str) -> object:
    # Imported on first use: a Ray worker unpickling a trial imports this package, and must not pay
    # for the driver's modules (Optuna's plots, the server client) to run one trial.
    if name in __all__:
        from . import _driver

        return getattr(_driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
