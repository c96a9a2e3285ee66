"""The leaderboard on the sweep's front page: its tables, page and figures logged as artifacts of
the newest sweep run of each compared experiment on the compared split, so the MLflow UI shows them."""

from __future__ import annotations

from pathlib import Path

from harness import tracking

LEADERBOARD = "leaderboard"  # the artifact folder on the sweep's parent run


def sweep_runs(tracker: tracking.Tracker, experiments: list[str], split_hash: str) -> list[str]:
    """Return the id of the newest sweep run on `split_hash` of each experiment that has one."""
    found = []
    for name in experiments:
        experiment_id = tracker.experiment_id(name, create=False)
        if experiment_id is None:
            continue
        runs = tracker.client.search_runs(
            [experiment_id],
            f"tags.{tracking.RUN_TYPE} = '{tracking.RunType.SWEEP}' and tags.{tracking.SPLIT_HASH} = '{split_hash}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        found += [r.info.run_id for r in runs]
    return found


def attach_leaderboard(
    tracking_uri: str, experiments: list[str], split_hash: str, files: list[Path], results_dir: Path
) -> list[str]:
    """Log the leaderboard's `files` (under `results_dir`) in `leaderboard/` of each compared
    sweep's parent run; returns those runs' ids."""
    tracker = tracking.tracker_for(tracking_uri)
    runs = sweep_runs(tracker, experiments, split_hash)
    for run_id in runs:
        for path in files:
            folder = Path(LEADERBOARD) / path.parent.relative_to(results_dir)
            tracker.log_file(run_id, path, folder.as_posix())
    return runs
