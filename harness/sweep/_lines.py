"""The console lines of a sweep: one per trial start, resume, retry and end, and one per
retrained fold, instead of Tune's per-trial result tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

import rich
from ray import tune
from rich.markup import escape

from harness import tracking

from ._failures import trial_error
from ._keys import CAUSE_KEY, DONE_KEY, EPOCH_KEY, ERROR_KEY, FAILED_KEY, trial_point

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class TrialLines(tune.Callback):
    """One console line per trial start and end, instead of Tune's per-trial result tables.

    It prints through rich's global console, looked up at each call: Tune pickles its callbacks.
    """

    def __init__(self, metric: str, scheduler: str) -> None:
        self._metric = metric
        self._scheduler = scheduler

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        epoch = (trial.last_result or {}).get(EPOCH_KEY)
        if epoch:
            # A trial that waited at a rung (reproducible sweeps) starts again from its checkpoint.
            rich.get_console().print(
                f"[dim]resume[/] {trial.config['baseline']:<9} {trial.trial_id}  after epoch {epoch}"
            )
            return
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial_point(trial.config).items())
        rich.get_console().print(f"[dim]start[/] {trial.config['baseline']:<10} {trial.trial_id}  {params}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        last = trial.last_result or {}
        if last.get(FAILED_KEY):
            error = f": {escape(last[ERROR_KEY])}" if last.get(ERROR_KEY) else ""
            rich.get_console().print(
                f"[red]FAILED[/] {trial.config['baseline']:<10} {trial.trial_id}  {last.get(CAUSE_KEY)} at epoch "
                f"{last.get(EPOCH_KEY, 0) + 1}, not retried (a retry would fail the same way){error}",
                highlight=False,
            )
            return
        how = "finished" if last.get(DONE_KEY) else f"[yellow]stopped by {self._scheduler}[/]"
        epoch = last.get(EPOCH_KEY, 0)
        rich.get_console().print(
            f"[green]end[/]   {trial.config['baseline']:<10} {trial.trial_id}  {how} at epoch {epoch}, "
            f"best {self._metric} {last.get('objective', float('nan')):.3f}"
        )

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        error = tracking.error_text(trial_error(trial) or "").splitlines()[0]
        rich.get_console().print(
            f"[red]FAILED[/] {trial.config['baseline']:<10} {trial.trial_id}  {error}",
            highlight=False,
        )

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        rich.get_console().print(
            f"[yellow]retry[/] {trial.config['baseline']:<10} {trial.trial_id}  after failure {trial.num_failures}"
        )


def fold_line(baseline: str, fold: int, accuracy: float) -> None:
    """Print that `baseline`'s winner was retrained on `fold`, with its test accuracy."""
    rich.get_console().print(f"[green]fold[/]  {baseline:<10} fold {fold} retrained, test accuracy {accuracy:.3f}")
