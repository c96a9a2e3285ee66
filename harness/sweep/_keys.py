"""The keys every trial reports to Tune beside its metrics, shared by the trial, the searcher, the
schedulers and the driver (a module of its own, so a trial's process imports no search library)."""

# 1.0 on the epoch the trial ended by itself (budget spent or early stopping), 0.0 before. A trial
# whose last report says 0 was stopped by the scheduler.
DONE_KEY = "trial_done"
# The epoch, i.e. the MLflow step of the reported metrics (Ray's training_iteration counts reports,
# which a resumed trial may not continue from).
EPOCH_KEY = "epoch"
# 1.0 on the one result a trial reports when it failed in a way a retry would repeat (a diverged
# loss, bad input, out of memory): the trial then ends without Tune retrying it.
FAILED_KEY = "trial_failed"
# Beside FAILED_KEY: why (harness.tracking.FAILURE_CAUSE's values).
CAUSE_KEY = "failure_cause"
