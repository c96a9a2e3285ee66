"""The leaderboard on the sweep's front page: its tables, page and figures logged as artifacts of
the newest sweep run of each compared experiment on the compared split, so the MLflow UI shows them;
and each baseline's row as tags of the registered versions of its winner."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from mlflow.entities import Run

from harness import tracking
from harness.model_registry import registered_name

LEADERBOARD = "leaderboard"  # the artifact folder on the sweep's parent run


def _sweep_runs(tracker: tracking.Tracker, experiments: list[str], split_hash: str) -> list[Run]:
    """Return the newest sweep run on `split_hash` of each experiment that has one."""
    found: list[Run] = []
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
        found += runs
    return found


@dataclass(frozen=True)
class Attached:
    """The sweep runs the leaderboard was logged to, and those still RUNNING it was not logged to
    (their tables would be of a sweep half done)."""

    runs: list[str]
    running: list[str]


def attach_leaderboard(
    tracking_uri: str, experiments: list[str], split_hash: str, files: list[Path], results_dir: Path
) -> Attached:
    """Log the leaderboard's `files` (under `results_dir`) in `leaderboard/` of each compared
    sweep's parent run that has ended, and say so in its description; returns which runs got them
    and which are still running."""
    tracker = tracking.tracker_for(tracking_uri)
    runs = _sweep_runs(tracker, experiments, split_hash)
    ended = [r for r in runs if r.info.status != tracking.RUNNING]
    line = tracking.leaderboard_line(datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    for run in ended:
        for path in files:
            folder = Path(LEADERBOARD) / path.parent.relative_to(results_dir)
            tracker.log_file(run.info.run_id, path, folder.as_posix())
        description = tracking.with_leaderboard_line(run.data.tags.get(tracking.DESCRIPTION, ""), line)
        tracker.set_tags(run.info.run_id, {tracking.DESCRIPTION: description})
    running = [r.info.run_name for r in runs if r.info.status == tracking.RUNNING]
    return Attached([r.info.run_id for r in ended], running)


def _row_tags(row: pd.Series) -> dict[str, str]:
    values = {k: v for k, v in row.items() if k not in {"baseline", "best_run_id"} and not _missing(v)}
    return {f"leaderboard.{k}": _text(v) for k, v in values.items()}


def _text(value: object) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    return str(value)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value))


def tag_registered_models(tracking_uri: str, experiments: list[str], table: pd.DataFrame) -> list[str]:
    """Set each baseline's leaderboard row (`table`, one row per baseline) as `leaderboard.*` tags
    on the registered versions of its winner (matched by winning run); returns 'name vN' of each."""
    client = tracking.tracker_for(tracking_uri).client
    tagged = []
    for experiment in experiments:
        for _, row in table.iterrows():
            name = registered_name(experiment, row.baseline)
            for version in client.search_model_versions(f"name = '{name}'"):
                if version.tags.get("winner_run_id") != row.best_run_id:
                    continue
                for key, value in _row_tags(row).items():
                    client.set_model_version_tag(name, version.version, key, value)
                tagged.append(f"{name} v{version.version}")
    return tagged
