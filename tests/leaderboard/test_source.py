"""Where `harness leaderboard` reads from and writes to: an experiment file or MLflow experiment names."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.config import LeaderboardSpec
from harness.errors import InputError
from harness.leaderboard.source import LeaderboardSource, resolve_source
from harness.table_layouts import TABLE_LAYOUTS
from tests.conftest import experiment_dict, write_experiment


def mlflow_store(folder: Path, *experiments: str) -> str:
    """Return the URI of a real SQLite MLflow store in `folder` holding `experiments`."""
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    client = MlflowClient(uri)
    for name in experiments:
        client.create_experiment(name)
    return uri


def test_experiment_file_gives_its_store_results_folder_and_leaderboard(tmp_path: Path) -> None:
    root = tmp_path / "idc_root"
    root.mkdir()
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    leaderboard = {"tables": ["idc", "summary"], "tolerance": {"default": 0.02, "test_accuracy": 0.01}}
    path = write_experiment(
        tmp_path / "idc.yaml",
        experiment_dict(root, tmp_path / "out", name="idc-run", tracking_uri=uri, leaderboard=leaderboard),
    )
    source = resolve_source(str(path), ["other"], tracking_uri=None, output_dir=None)
    assert source == LeaderboardSource(
        uri,
        ("idc-run", "other"),
        (tmp_path / "out" / "idc-run").resolve(),
        LeaderboardSpec(**leaderboard),
        ("idc", "summary"),
    )
    # --table and the command line's store and folder win over the file's.
    elsewhere = mlflow_store(tmp_path / "cli")
    source = resolve_source(str(path), tracking_uri=elsewhere, output_dir=tmp_path / "cli", tables=["gusa-table1"])
    assert (source.tracking_uri, source.results_dir, source.tables) == (
        elsewhere,
        (tmp_path / "cli" / "idc-run").resolve(),
        ("gusa-table1",),
    )


def test_mlflow_names_read_the_store_under_the_output_folder(tmp_path: Path) -> None:
    uri = mlflow_store(tmp_path / "results", "idc-lb", "idc-lb-2")
    source = resolve_source("idc-lb", ["idc-lb-2"], output_dir=tmp_path / "results")
    assert source == LeaderboardSource(
        uri,
        ("idc-lb", "idc-lb-2"),
        (tmp_path / "results" / "idc-lb+idc-lb-2").resolve(),
        LeaderboardSpec(),
        ("summary",),
    )
    only_option = resolve_source(None, ["idc-lb-2"], tracking_uri=uri, output_dir=tmp_path / "out", tables=["idc"])
    assert (only_option.names, only_option.results_dir, only_option.tables) == (
        ("idc-lb-2",),
        (tmp_path / "out" / "idc-lb-2").resolve(),
        ("idc",),
    )


def test_missing_sqlite_store_is_an_input_error(tmp_path: Path) -> None:
    missing = f"sqlite:///{(tmp_path / 'nothing').resolve() / 'mlflow.db'}"
    with pytest.raises(InputError) as raised:
        resolve_source("idc-lb", output_dir=tmp_path / "nothing")
    assert str(raised.value) == f"{missing}: no MLflow store there (run `harness sweep` first, or pass --tracking-uri)"


def test_no_experiment_named_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as raised:
        resolve_source(None, [], output_dir=tmp_path)
    assert str(raised.value) == "name an experiment: an experiment file, an MLflow experiment, or --experiment NAME"


def test_unknown_table_is_an_input_error(tmp_path: Path) -> None:
    uri = mlflow_store(tmp_path, "idc-lb")
    with pytest.raises(InputError) as raised:
        resolve_source("idc-lb", tracking_uri=uri, tables=["idc", "table9"])
    assert str(raised.value) == f"--table 'table9': expected one of: {', '.join(TABLE_LAYOUTS)}"
