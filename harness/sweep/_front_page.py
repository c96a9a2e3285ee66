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
    """Return the parent run's description (Markdown): the winners and how to compare the trials;
    `names` maps a winner's run id to its run name."""
    lines = [
        f"Sweep of **{experiment}**: every trial, fold retrain, ensemble and floor is nested under this run.",
        "",
        f"Compare the trials: in the runs table, search `{TRIALS_FILTER}`, then open the chart view "
        f"(their `val_*` curves overlay) or select them all and press Compare (parallel coordinates).",
        "",
    ]
    if winners:
        lines.append(f"Winners by {metric}:")
        lines += [f"- {w.baseline}: {names.get(w.run_id, w.run_id)} ({metric} {w.objective:.4f})" for w in winners]
    else:
        lines.append("No trial finished by itself, so no baseline has a winner.")
    lines += ["", "The comparison with the published numbers: `harness leaderboard` (attached below once run)."]
    return "\n".join(lines)


def write_front_page(
    tracker: tracking.Tracker, parent: str, experiment: str, metric: str, winners: list[Winner]
) -> None:
    """Tag the sweep's parent run with its winners, log their objectives and describe the sweep."""
    names = {w.run_id: tracker.client.get_run(w.run_id).info.run_name for w in winners}
    tags = {**winner_tags(winners), tracking.DESCRIPTION: description(experiment, metric, winners, names)}
    tracker.set_tags(parent, tags)
    if winners:
        tracker.log_metrics(parent, {f"winner.{w.baseline}.{metric}": w.objective for w in winners}, step=0)
