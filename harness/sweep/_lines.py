"""The console lines of a sweep: one per trial start, resume, retry and end, and one per epoch and
per retrained fold, instead of Tune's per-trial result tables. Each says what its number is: a
trial's objective is the one at its selected epoch, and a budget is the epochs it can really run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import rich
from ray import tune
from rich.markup import escape

from harness import tracking

from ._failures import trial_error
from ._keys import CAUSE_KEY, DONE_KEY, EPOCH_KEY, ERROR_KEY, FAILED_KEY, SELECTED_EPOCH_KEY, trial_point

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

    from ._retrain import FoldEpoch

# How a run picks the epoch whose weights it keeps (harness.train: early stopping on validation loss).
SELECTION = "lowest val loss"


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _line(text: str, *, highlight: bool | None = None) -> None:
    """Print `text` as one line through rich's global console (looked up at each call: Tune pickles
    its callbacks), never wrapped: one line per event however narrow the console or the pipe."""
    rich.get_console().print(text, soft_wrap=True, highlight=highlight)


class TrialLines(tune.Callback):
    """One console line per trial start and end, instead of Tune's per-trial result tables.

    `budget(baseline, point)` returns the epochs a trial can run (harness.run_spec.epoch_budget),
    shown in place of a sampled epochs_max the search's max_epochs may cap.
    """

    def __init__(self, metric: str, scheduler: str, budget: Callable[[str, dict], int]) -> None:
        self._metric = metric
        self._scheduler = scheduler
        self._budget = budget

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        epoch = (trial.last_result or {}).get(EPOCH_KEY)
        if epoch:
            # A trial that waited at a rung (reproducible sweeps) starts again from its checkpoint.
            _line(f"[dim]resume[/] {trial.config['baseline']:<9} {trial.trial_id}  after epoch {epoch}")
            return
        point = trial_point(trial.config)
        params = ", ".join(f"{k}={_short(v)}" for k, v in point.items() if k != "epochs_max")
        budget = self._budget(trial.config["baseline"], point)
        shown = "; ".join(filter(None, [params, f"up to {budget} epoch{'s' if budget != 1 else ''}"]))
        _line(f"[dim]start[/] {trial.config['baseline']:<10} {trial.trial_id}  {shown}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        last = trial.last_result or {}
        if last.get(FAILED_KEY):
            error = f": {escape(last[ERROR_KEY])}" if last.get(ERROR_KEY) else ""
            _line(
                f"[red]FAILED[/] {trial.config['baseline']:<10} {trial.trial_id}  {last.get(CAUSE_KEY)} at epoch "
                f"{last.get(EPOCH_KEY, 0) + 1}, not retried (a retry would fail the same way){error}",
                highlight=False,
            )
            return
        how = "finished" if last.get(DONE_KEY) else f"[yellow]stopped by {self._scheduler}[/]"
        ended = f"{how} at epoch {last.get(EPOCH_KEY, 0)}"
        _line(f"[green]end[/]   {trial.config['baseline']:<10} {trial.trial_id}  {ended}, {self._selected(last)}")

    def _selected(self, last: dict) -> str:
        """Return what a trial's objective is: the metric at the epoch the trial selected."""
        # A trial checkpointed by an older harness, resumed, may report no selected epoch.
        selected = last.get(SELECTED_EPOCH_KEY)
        at = f"the selected epoch {int(selected)} ({SELECTION})" if selected is not None else "its selected epoch"
        return f"{self._metric} {last.get('objective', float('nan')):.3f} at {at}"

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        error = tracking.error_text(trial_error(trial) or "").splitlines()[0]
        _line(f"[red]FAILED[/] {trial.config['baseline']:<10} {trial.trial_id}  {error}", highlight=False)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        _line(f"[yellow]retry[/] {trial.config['baseline']:<10} {trial.trial_id}  after failure {trial.num_failures}")


def fold_epoch_line(progress: FoldEpoch) -> None:
    """Print one epoch of a winner's retrain on a fold: its validation loss and metric."""
    _line(
        f"[dim]epoch[/] {progress.baseline:<10} fold {progress.fold} epoch {progress.epoch} of at most "
        f"{progress.budget}: val loss {progress.val_loss:.3f}, {progress.metric} {progress.value:.3f}"
    )


def fold_line(baseline: str, fold: int, accuracy: float) -> None:
    """Print that `baseline`'s winner was retrained on `fold`, with its test accuracy."""
    _line(
        f"[green]fold[/]  {baseline:<10} fold {fold} retrained, test accuracy {accuracy:.3f} at its selected "
        f"epoch ({SELECTION})"
    )
