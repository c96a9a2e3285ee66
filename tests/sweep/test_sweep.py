"""End to end through the CLI with real Ray, real MLflow (SQLite) and real PNG files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from harness import tracking
from harness.cli import app
from harness.data.datasets.idc import write_synthetic_idc
from harness.sweep._search import optuna_storage
from harness.sweep._studies import mlflow_disagreements
from tests.conftest import ensure_local_ray, experiment_dict, write_experiment

MAX_EPOCHS = 3


@dataclass
class Swept:
    """A finished sweep: its experiment file, MLflow store and CLI output."""

    experiment: Path
    uri: str
    output: str
    out_dir: Path

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def runs(self, run_type: str) -> list:
        client = self.client()
        experiment = client.get_experiment_by_name("sweep-test")
        return client.search_runs([experiment.experiment_id], f"tags.{tracking.RUN_TYPE} = '{run_type}'")


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Swept:
    """One sweep that every test of this module checks something of: 4 trials of two baselines,
    one at a time, on a 12-patient tree (what the trials train is nearly all of its time)."""
    tmp = tmp_path_factory.mktemp("sweep")
    root = write_synthetic_idc(tmp / "idc", patients=12, seed=1)
    data = experiment_dict(
        root,
        tmp / "results",
        name="sweep-test",
        baselines=[
            # Batch 4 gives CancerNet enough optimiser steps per epoch on this small tree.
            {"name": "cancernet", "fixed": {"batch_size": 4, "epochs_max": MAX_EPOCHS}},
            {"name": "resnet18", "fixed": {"freeze": "none", "input_size": 50, "batch_size": 16, "epochs_max": 2}},
        ],
        search={
            "trials": 4,
            "max_epochs": MAX_EPOCHS,
            "grace_period": 1,
            "reduction_factor": 2,
            "max_concurrent": 1,
            "seed": 0,
            "retrain": "none",
        },
    )
    data["baselines"][1]["fixed"]["optimizer"] = "adam"
    data["training"] = {**data["training"], "checkpoint_every": 2}
    path = write_experiment(tmp / "sweep.yaml", data)
    ensure_local_ray()
    result = CliRunner().invoke(app, ["sweep", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return Swept(path, f"sqlite:///{tmp / 'results' / 'mlflow.db'}", result.output, tmp / "results")


def test_one_child_run_per_trial_under_one_parent(swept: Swept) -> None:
    sweeps, trials = swept.runs("sweep"), swept.runs("trial")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    assert len(trials) == 8
    assert {r.data.tags[tracking.PARENT] for r in trials} == {sweeps[0].info.run_id}
    trial_ids = [r.data.tags[tracking.TRIAL_ID] for r in trials]
    assert len(set(trial_ids)) == 8
    counts = pd.Series([r.data.tags[tracking.BASELINE] for r in trials]).value_counts().to_dict()
    assert counts == {"cancernet": 4, "resnet18": 4}
    assert sweeps[0].data.metrics["sweep_trials"] == 8


def test_early_stopped_trials_finish_with_their_outcome_and_tags(swept: Swept) -> None:
    trials = swept.runs("trial")
    stopped = [r for r in trials if r.data.tags.get(tracking.STOPPED_BY) == "asha"]
    finished = [r for r in trials if tracking.STOPPED_BY not in r.data.tags]
    assert stopped, "ASHA stopped no trial: the test sweep no longer exercises early stopping"
    assert len(stopped) + len(finished) == 8
    # Stopped by design, so no failure mark in the MLflow UI: FINISHED, and the outcome says why.
    assert {(r.info.status, r.data.tags[tracking.OUTCOME]) for r in stopped} == {("FINISHED", "stopped_early")}
    assert {(r.info.status, r.data.tags[tracking.OUTCOME]) for r in finished} == {("FINISHED", "completed")}
    client = swept.client()
    for run in stopped:
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert epochs == list(range(1, len(epochs) + 1))
        assert int(run.data.tags["stopped_at_epoch"]) == len(epochs)
        assert "test_accuracy" not in run.data.metrics
    for run in finished:
        assert "test_accuracy" in run.data.metrics
        assert {a.path for a in client.list_artifacts(run.info.run_id, "test")} == {
            "test/confusion_matrix.json",
            "test/confusion_matrix.png",
            "test/predictions.csv",
            "test/maps_best.png",
            "test/maps_worst.png",
        }
    assert f"{len(stopped)}" in swept.output and "stopped early" in swept.output
    assert f"look at it: harness ui {swept.experiment}" in " ".join(swept.output.split())


def test_trials_checkpoint_every_second_epoch_and_log_its_size(swept: Swept) -> None:
    client = swept.client()
    for run in swept.runs("trial"):
        assert run.data.params["checkpoint_every"] == "2"
        sizes = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "trial_checkpoint_mb")}
        last = max(sizes)
        assert sorted(sizes) == list(range(1, last + 1))
        for epoch, megabytes in sizes.items():
            if epoch == last and run.data.tags[tracking.OUTCOME] == "completed":
                assert 0 < megabytes < 0.1, (epoch, megabytes)  # done: only its last result is kept
            elif epoch % 2:
                assert megabytes == 0, (epoch, megabytes)  # no checkpoint on odd epochs
            else:
                assert megabytes > 1, (epoch, megabytes)  # weights and optimiser state


def test_optuna_studies_hold_what_mlflow_records(swept: Swept) -> None:
    """Every trial's Optuna value is its run's last `objective` and its intermediate values are the
    run's per-epoch series, the last epoch included, also for trials ASHA stopped at the first rung."""
    storage = f"sqlite:///{swept.out_dir / 'optuna.db'}"
    trials = swept.runs("trial")
    compared, mismatches = mlflow_disagreements(storage, swept.uri, "sweep-test")
    print(f"\noptuna/mlflow agreement: {compared} trials compared, {len(mismatches)} mismatches", *mismatches, sep="\n")
    assert (compared, mismatches) == (len(trials), [])
    first_rung = [r for r in trials if r.data.tags.get("stopped_at_epoch") == "1"]
    assert first_rung, "ASHA stopped no trial at its first rung: the sweep no longer exercises that case"
    run = first_rung[0]
    study = optuna.load_study(
        study_name=next(
            n
            for n in optuna.get_all_study_names(optuna_storage(storage))
            if n.endswith(run.data.tags[tracking.BASELINE])
        ),
        storage=optuna_storage(storage),
    )
    assert study.metric_names == ["sel_val_accuracy"]
    trial = study.trials[int(run.data.tags[tracking.OPTUNA_TRIAL])]
    assert trial.user_attrs == {
        "ray_trial_id": run.data.tags[tracking.TRIAL_ID],
        "mlflow_run_id": run.info.run_id,
        "mlflow_run_url": f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
    }
    assert trial.state == TrialState.PRUNED
    assert (
        trial.intermediate_values == {1: run.data.metrics["objective"]} and trial.value == run.data.metrics["objective"]
    )


def test_optuna_studies_share_the_sweep_s_name_and_lead_to_its_mlflow_runs(swept: Swept) -> None:
    """The studies' names and the sweep run's name share the sweep's identifier (its Tune folder),
    and each study carries the tracking store, the experiment and the sweep run (its address where
    `mlflow ui` serves this SQLite store), as its trials carry their runs'."""
    storage = f"sqlite:///{swept.out_dir / 'optuna.db'}"
    (sweep,) = swept.runs("sweep")
    identifier = Path(sweep.data.tags["ray_storage"]).name
    assert re.fullmatch(r"sweep-\d{8}-\d{6}", identifier) and sweep.info.run_name == f"sweep-test {identifier}"
    names = sorted(optuna.get_all_study_names(optuna_storage(storage)))
    assert names == [f"sweep-test/{identifier}/cancernet", f"sweep-test/{identifier}/resnet18"]
    pages = f"http://127.0.0.1:5000/#/experiments/{sweep.info.experiment_id}/runs"
    for name in names:
        study = optuna.load_study(study_name=name, storage=optuna_storage(storage))
        attrs = dict(study.user_attrs)
        # Whether importance was drawn depends on how many trials halving completed: either is said.
        assert attrs.pop("param_importance").startswith(("drawn: ", "not computed: "))
        assert attrs == {
            "mlflow_tracking_uri": swept.uri,
            "mlflow_experiment": "sweep-test",
            "mlflow_experiment_id": sweep.info.experiment_id,
            "mlflow_sweep_run_id": sweep.info.run_id,
            "mlflow_sweep_run_url": f"{pages}/{sweep.info.run_id}",
            "mlflow_ui": f"the run URLs once served: mlflow ui --backend-store-uri {swept.uri}",
        }
        for trial in study.trials:
            assert trial.user_attrs["mlflow_run_url"] == f"{pages}/{trial.user_attrs['mlflow_run_id']}"


def test_floors_are_fitted_on_every_fold_of_the_same_split(swept: Swept) -> None:
    (sweep,) = swept.runs("sweep")
    floors = {r.data.tags[tracking.BASELINE]: r for r in swept.runs("floor")}
    assert set(floors) == {"majority", "colour_forest"}
    folds, ensembles = swept.runs("fold"), swept.runs("ensemble")
    for run in floors.values():
        assert run.data.tags[tracking.PARENT] == sweep.info.run_id and run.data.tags[tracking.FLOOR] == "true"
        assert run.data.tags[tracking.SPLIT_HASH] == sweep.data.tags[tracking.SPLIT_HASH]
        mine = [f for f in folds if f.data.tags[tracking.PARENT] == run.info.run_id]
        assert sorted(int(f.data.tags[tracking.FOLD]) for f in mine) == [0, 1, 2]
        # The floor's own run is its search fold's model, as a trial is.
        search = next(f for f in mine if f.data.tags[tracking.FOLD] == "0")
        assert run.data.metrics["sel_val_accuracy"] == search.data.metrics["sel_val_accuracy"]
        (ensemble,) = [e for e in ensembles if e.data.tags[tracking.PARENT] == run.info.run_id]
        assert run.data.metrics["ensemble_test_accuracy"] == ensemble.data.metrics["test_accuracy"]
    assert "floors fitted on every fold and logged beside them: majority, colour_forest" in swept.output


def test_every_run_records_split_hash_commit_and_dataset(swept: Swept) -> None:
    runs = swept.runs("trial") + swept.runs("sweep")
    hashes = {r.data.tags[tracking.SPLIT_HASH] for r in runs}
    assert len(hashes) == 1 and len(hashes.pop()) == 64
    assert all(r.data.tags["git_commit"] for r in runs)
    assert {r.data.tags[tracking.DATASET] for r in runs} == {"idc"}
    client = swept.client()
    sweep = swept.runs("sweep")[0]
    split_files = [a.path for a in client.list_artifacts(sweep.info.run_id, "split")]
    assert len(split_files) == 1 and split_files[0].startswith("split/split-")


def test_run_names_tell_the_runs_apart_and_every_run_has_an_outcome(swept: Swept) -> None:
    client = swept.client()
    experiment = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([experiment.experiment_id], "tags.run_type != 'train'")
    names = {r.info.run_id: r.info.run_name for r in runs}
    by_type: dict[str, list[str]] = {}
    for run in runs:
        by_type.setdefault(run.data.tags[tracking.RUN_TYPE], []).append(names[run.info.run_id])
    (sweep,) = by_type["sweep"]
    assert re.fullmatch(r"sweep-test sweep-\d{8}-\d{6}", sweep)
    for run in swept.runs("trial"):
        number = int(run.data.tags[tracking.OPTUNA_TRIAL])
        assert names[run.info.run_id] == f"{run.data.tags[tracking.BASELINE]} t{number:02d}"
    assert sorted(by_type["floor"]) == ["colour_forest floor", "majority floor"]
    assert sorted(by_type["fold"]) == sorted(f"{f} fold {k}" for f in ("colour_forest", "majority") for k in range(3))
    assert len(set(names.values())) == len(names)
    assert all(r.data.tags[tracking.OUTCOME] == "completed" for r in runs if r.data.tags[tracking.RUN_TYPE] != "trial")


def test_every_run_shows_its_dataset_input_and_source(swept: Swept) -> None:
    client = swept.client()
    sweep = swept.runs("sweep")[0]
    manifest_hash = sweep.data.tags[tracking.MANIFEST_HASH]
    for run in swept.runs("trial") + [sweep]:
        (given,) = client.get_run(run.info.run_id).inputs.dataset_inputs
        assert (given.dataset.name, given.dataset.digest) == ("idc", manifest_hash[:16])
        assert json.loads(given.dataset.source)["uri"] == run.data.tags[tracking.DATASET_ROOT]
        assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["git_commit"]
        assert run.data.tags["mlflow.source.name"]
    for run in swept.runs("trial"):
        # The metrics at the selected epoch say so, and the description says how it was selected.
        metrics = run.data.metrics
        assert 1 <= metrics["selected_epoch"] <= MAX_EPOCHS and "sel_val_accuracy" in metrics
        assert not any(name.startswith("best_") for name in metrics)
        assert "the epoch with the lowest validation loss" in run.data.tags["mlflow.note.content"]


def test_the_parent_run_names_each_baselines_winner(swept: Swept) -> None:
    (sweep,) = swept.runs("sweep")
    trials = swept.runs("trial")
    description = sweep.data.tags["mlflow.note.content"]
    assert 'tags.run_type = "trial"' in description
    # The winners are the first line, which the UI shows before "Show more".
    first = description.splitlines()[0]
    assert first.startswith("**Winners** by val_accuracy: ")
    for baseline in ("cancernet", "resnet18"):
        winner = next(r for r in trials if r.info.run_id == sweep.data.tags[f"winner.{baseline}"])
        assert winner.data.tags[tracking.BASELINE] == baseline and winner.data.tags[tracking.OUTCOME] == "completed"
        assert sweep.data.tags[f"winner.{baseline}.trial"] == winner.data.tags[tracking.TRIAL_ID]
        assert sweep.data.metrics[f"winner.{baseline}.val_accuracy"] == winner.data.metrics["objective"]
        completed = [r for r in trials if r.data.tags[tracking.OUTCOME] == "completed"]
        best = max(r.data.metrics["objective"] for r in completed if r.data.tags[tracking.BASELINE] == baseline)
        assert winner.data.metrics["objective"] == best
        assert f"{winner.info.run_name} ({winner.data.metrics['objective']:.4f})" in first


def test_confusion_matrix_artifact_counts_the_test_patients(swept: Swept) -> None:
    client = swept.client()
    run = next(r for r in swept.runs("trial") if r.info.status == "FINISHED")
    local = Path(client.download_artifacts(run.info.run_id, "test/confusion_matrix.json"))
    matrix = json.loads(local.read_text())
    predictions = pd.read_csv(client.download_artifacts(run.info.run_id, "test/predictions.csv"))
    assert matrix["classes"] == ["non_idc", "idc"]
    assert sum(map(sum, matrix["rows_true_cols_pred"])) == len(predictions)
    accuracy = (predictions.label == predictions.pred).mean()
    assert accuracy == pytest.approx(run.data.metrics["test_accuracy"])


def test_leaderboard_numbers_equal_the_metrics_in_mlflow(swept: Swept) -> None:
    result = CliRunner().invoke(app, ["leaderboard", str(swept.experiment)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(swept.out_dir / "sweep-test" / "summary.csv").rename(columns={"model": "baseline"})
    assert (swept.out_dir / "sweep-test" / "summary.md").read_text().count("\n| ") == 5
    # The floors come last, marked, and never take a bold cell.
    assert list(table.baseline[-2:]) == ["colour_forest (floor)", "majority (floor)"]
    assert list(table.row_kind) == ["harness", "harness", "floor", "floor"]
    table = table[table.row_kind == "harness"]
    assert {"leaderboard.md", "leaderboard.tex", "leaderboard.html", "summary.tex"} <= {
        p.name for p in (swept.out_dir / "sweep-test").iterdir()
    }
    # The tables and the page on the sweep's front page in the MLflow UI.
    (sweep,) = swept.runs("sweep")
    attached = {a.path for a in swept.client().list_artifacts(sweep.info.run_id, "leaderboard")}
    assert {"leaderboard/leaderboard.md", "leaderboard/leaderboard.html", "leaderboard/summary.md"} <= attached
    assert {"leaderboard/summary.tex", "leaderboard/summary.full.tex", "leaderboard/summary.csv"} <= attached
    assert "leaderboard/figures" in attached
    description = sweep.data.tags[tracking.DESCRIPTION]
    assert "not attached yet" not in description and f"{tracking.LEADERBOARD_LINE} attached 20" in description
    trials = swept.runs("trial")
    for row in table.itertuples():
        mine = [r for r in trials if r.data.tags[tracking.BASELINE] == row.baseline]
        tested = [r for r in mine if "test_accuracy" in r.data.metrics]
        # Best objective; ties go to the lower validation loss, as in the leaderboard and the retrain.
        best = min(tested, key=lambda r: (-r.data.metrics["objective"], r.data.metrics["sel_val_loss"]))
        assert row.best_run_id == best.info.run_id
        assert row.val_accuracy == pytest.approx(best.data.metrics["sel_val_accuracy"])
        assert row.test_accuracy == pytest.approx(best.data.metrics["test_accuracy"])
        assert row.test_auc == pytest.approx(best.data.metrics["test_auc"])
        assert row.test_recall == pytest.approx(best.data.metrics["test_sensitivity"])
        # retrain: none, so no fold ensemble (test_cluster checks the columns when there is one).
        assert pd.isna(row.ensemble_test_accuracy) and pd.isna(row.folds_mean_test_accuracy)
        assert row.params == int(best.data.tags[f"{tracking.PARAM_COUNT_PREFIX}torch"])
        assert not any(m.startswith(tracking.PARAM_COUNT_PREFIX) for m in best.data.metrics)
        # Neither baseline has a published count, so the published-convention column stays empty.
        assert pd.isna(row.params_published_convention)
        assert row.trials == len(mine)
        assert row.stopped_early == sum(r.data.tags.get(tracking.STOPPED_BY) in ("asha", "halving") for r in mine)
    assert set(table.baseline) == {"cancernet", "resnet18"}


def test_leaderboard_leaves_out_runs_of_another_split(swept: Swept) -> None:
    tracker = tracking.Tracker(swept.uri)
    experiment_id = tracker.experiment_id("sweep-test")
    stray = tracker.start_run(
        experiment_id,
        name="other-split",
        run_type=tracking.RunType.TRIAL,
        tags={tracking.BASELINE: "cancernet", tracking.SPLIT_HASH: "f" * 64},
        params={},
    )
    tracker.log_metrics(stray, {"objective": 1.0, "sel_val_accuracy": 1.0, "test_accuracy": 1.0}, step=1)
    tracker.finish(stray, tracking.FINISHED)
    result = CliRunner().invoke(app, ["leaderboard", str(swept.experiment)], catch_exceptions=False)
    assert result.exit_code == 0
    assert "excluded 1 runs made on another split (ffffffffffff)" in result.output
    table = pd.read_csv(swept.out_dir / "sweep-test" / "summary.csv").rename(columns={"model": "baseline"})
    assert stray not in set(table.best_run_id)
    assert table.loc[table.baseline == "cancernet", "trials"].item() == 4


def test_train_command_logs_its_compute_options(swept: Swept, tmp_path: Path) -> None:
    data = yaml.safe_load(swept.experiment.read_text())
    data["name"] = "compute-test"
    data["training"]["compute"] = {"precision": "bf16", "channels_last": True}
    # One epoch: what is checked is what the run logs, and bf16 is slow on a CPU.
    data["baselines"][0]["fixed"]["epochs_max"] = 1
    path = write_experiment(tmp_path / "bf16.yaml", data)
    result = CliRunner().invoke(app, ["train", str(path), "--baseline", "cancernet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = swept.client()
    experiment = client.get_experiment_by_name("compute-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and np.isfinite(run.data.metrics["train_loss"])
    params = run.data.params
    assert (params["precision"], params["channels_last"], params["cudnn_benchmark"]) == ("bf16", "true", "false")


def test_train_command_tracks_one_run(swept: Swept, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", str(swept.experiment), "--baseline", "cancernet", "--fold", "1"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    runs = swept.runs("train")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags[tracking.FOLD] == "1"
    assert run.data.params["batch_size"] == "4" and run.data.params["lr"] == "0.01"
    assert "test_accuracy" in run.data.metrics


def test_the_recipe_trial_and_harness_train_of_the_recipe_log_the_same_run(swept: Swept, tmp_path: Path) -> None:
    data = yaml.safe_load(swept.experiment.read_text())
    data["name"] = "recipe-test"
    path = write_experiment(tmp_path / "recipe.yaml", data)
    result = CliRunner().invoke(app, ["train", str(path), "--baseline", "cancernet", "--fold", "0"])
    assert result.exit_code == 0, result.output
    client = swept.client()
    (train,) = client.search_runs([client.get_experiment_by_name("recipe-test").experiment_id])
    (recipe,) = [
        r
        for r in swept.runs("trial")
        if r.data.tags[tracking.BASELINE] == "cancernet" and r.data.tags.get(tracking.OPTUNA_TRIAL) == "0"
    ]
    # Optuna's first cancernet point is the published recipe (with the experiment's pins).
    assert recipe.data.params == train.data.params
    assert len(train.data.params) > 20  # every training parameter, not only the searched ones
    first = {
        run.info.run_id: {m: client.get_metric_history(run.info.run_id, m)[0] for m in ("train_loss", "val_loss")}
        for run in (recipe, train)
    }
    for metric in ("train_loss", "val_loss"):
        a, b = first[recipe.info.run_id][metric], first[train.info.run_id][metric]
        assert a.step == b.step == 1 and a.value == b.value, metric
