"""What `harness leaderboard` reads and where it writes: from an experiment file (its store, name,
results folder and `leaderboard:` settings), or from the names of MLflow experiments (a store under
the output folder unless one is given, and default settings)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.config import LeaderboardSpec, load_experiment
from harness.errors import InputError
from harness.locking import sqlite_path
from harness.table_layouts import TABLE_LAYOUTS


@dataclass(frozen=True)
class LeaderboardSource:
    """The MLflow store and experiments a leaderboard compares, the folder it is written to, the
    experiment file's leaderboard settings (defaults without a file) and the layouts to build."""

    tracking_uri: str
    names: tuple[str, ...]
    results_dir: Path
    spec: LeaderboardSpec
    tables: tuple[str, ...]


def resolve_source(
    experiment: str | None,
    experiments: Sequence[str] = (),
    *,
    tracking_uri: str | None = None,
    output_dir: Path | None = None,
    tables: Sequence[str] = (),
) -> LeaderboardSource:
    """Return where the leaderboard of `experiment` (an experiment YAML file or an MLflow experiment
    name) and the further MLflow `experiments` comes from and goes to; `tables` are --table's
    layouts, by default the file's leaderboard.tables, else summary.

    Raises InputError for an invalid experiment file, no experiment named at all, a SQLite store
    that does not exist, or an unknown layout.
    """
    if experiment is not None and experiment.endswith((".yaml", ".yml")):
        config = load_experiment(Path(experiment), tracking_uri=tracking_uri, output_dir=output_dir)
        names = (config.name, *experiments)
        uri, results, spec = config.resolved_tracking_uri(), config.results_dir, config.leaderboard
    else:
        names = tuple(experiments) if experiment is None else (experiment, *experiments)
        uri, results = _named_store(names, tracking_uri, output_dir)
        spec = LeaderboardSpec()
    unknown = [t for t in tables if t not in TABLE_LAYOUTS]
    if unknown:
        raise InputError(f"--table {unknown[0]!r}: expected one of: {', '.join(TABLE_LAYOUTS)}")
    return LeaderboardSource(uri, names, results, spec, tuple(tables or spec.tables))


def _named_store(names: tuple[str, ...], tracking_uri: str | None, output_dir: Path | None) -> tuple[str, Path]:
    """Return the tracking URI and results folder of MLflow experiments named without a file."""
    if not names:
        raise InputError("name an experiment: an experiment file, an MLflow experiment, or --experiment NAME")
    out = (output_dir or Path("results")).resolve()
    uri = tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise InputError(f"{uri}: no MLflow store there (run `harness sweep` first, or pass --tracking-uri)")
    return uri, out / "+".join(names)
