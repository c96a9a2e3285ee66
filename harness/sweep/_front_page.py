"""The sweep's parent run as its front page in the MLflow UI: each baseline's winning trial named
in tags and its objective as a metric, and a description saying how to compare the trials."""

from __future__ import annotations

from harness import tracking

from ._winners import Winner

# The runs-table filter that shows a sweep's trials alone (MLflow's chart view then overlays their curves).
TRIALS_FILTER = 'tags.run_type = "trial"'


def winner_tags(winners: list[Winner]) -> dict[str, str]:
    """Return the parent's tags naming each baseline's winning run and Ray trial."""
    tags = {}
    for w in winners:
        tags[f"winner.{w.baseline}"] = w.run_id
        tags[f"winner.{w.baseline}.trial"] = w.trial_id
    return tags


def description(experiment: str, metric: str, winners: list[Winner], names: dict[str, str]) -> str:
    """Return the parent run's description (Markdown): the winners on its first line (what the UI
    shows before "Show more"), how to compare the trials, and whether the leaderboard is attached;
    `names` maps a winner's run id to its run name."""
    if winners:
        first = f"**Winners** by {metric}: " + "; ".join(
            f"{names.get(w.run_id, w.baseline)} ({w.objective:.4f})" for w in winners
        )
    else:
        first = "**No winner**: no trial finished by itself."
    return "\n".join(
        [
            first,
            "",
            f"Sweep of **{experiment}**: every trial, fold retrain, ensemble and floor is nested under this run.",
            "",
            "Compare the trials: `harness ui` opens the runs table on them (outcome, objective and searched "
            "parameters as columns; the chart view draws each baseline's parameters against the objective), "
            f"or search the runs table for `{TRIALS_FILTER}`.",
            "",
            tracking.leaderboard_line(None),
        ]
    )


def write_front_page(
    tracker: tracking.Tracker, parent: str, experiment: str, metric: str, winners: list[Winner]
) -> None:
    """Tag the sweep's parent run with its winners, log their objectives and describe the sweep."""
    names = {w.run_id: tracker.client.get_run(w.run_id).info.run_name for w in winners}
    tags = {**winner_tags(winners), tracking.DESCRIPTION: description(experiment, metric, winners, names)}
    tracker.set_tags(parent, tags)
    if winners:
        tracker.log_metrics(parent, {f"winner.{w.baseline}.{metric}": w.objective for w in winners}, step=0)
