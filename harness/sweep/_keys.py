"""The keys every trial reports to Tune beside its metrics, and those its config holds beside its
hyperparameters, shared by the trial, the searcher, the schedulers and the driver (a module of its
own, so a trial's process imports no search library)."""

# 1.0 on the epoch the trial ended by itself (budget spent or early stopping), 0.0 before. A trial
# whose last report says 0 was stopped by the scheduler.
DONE_KEY = "trial_done"
# The epoch, i.e. the MLflow step of the reported metrics (Ray's training_iteration counts reports,
# which a resumed trial may not continue from).
EPOCH_KEY = "epoch"
# 1.0 on the one result a trial reports when it failed in a way a retry would repeat (a diverged
# loss, bad input, out of memory): the trial then ends without Tune retrying it.
FAILED_KEY = "trial_failed"
# Beside FAILED_KEY: why (harness.tracking.FAILURE_CAUSE's values), and the error's first line.
CAUSE_KEY = "failure_cause"
ERROR_KEY = "failure_error"
# Among the metrics (harness.experiment.epoch_metrics): the epoch the trial selected so far (lowest
# validation loss), whose weights it keeps and whose metrics `objective` and sel_val_* are.
SELECTED_EPOCH_KEY = "selected_epoch"
# Every result also carries the trial's MLflow run, so the driver's searcher and callbacks find
# it without asking the tracking store.
RUN_ID_KEY = "mlflow_run_id"

# Beside "baseline" in each trial's config: its number in the baseline's Optuna study, which names
# the trial's run from its start.
STUDY_TRIAL_KEY = "optuna_trial"


def trial_point(config: dict) -> dict:
    """Return the hyperparameters of a trial's config: everything but its baseline and study number."""
    return {k: v for k, v in config.items() if k not in ("baseline", STUDY_TRIAL_KEY)}
