"""Short real sweeps: the attention models on data with RoI masks, and every shipped experiment file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from harness import tracking
from harness.cli import app
from harness.data.datasets.idc import write_synthetic_idc

from .conftest import REPO, write_experiment

pytestmark = pytest.mark.e2e


def _sweep(path: Path, *extra: str) -> str:
    result = CliRunner().invoke(app, ["sweep", str(path), *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _trial_runs(out: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], f"tags.{tracking.RUN_TYPE} = 'trial'")


def test_gusa_and_amil_sweep_with_roi_masks_and_log_their_maps(
    tmp_path: Path, synthetic_bach: tuple[Path, Path], local_ray: None
) -> None:
    root, masks = synthetic_bach
    experiment = {
        "name": "attention",
        "dataset": {
            "name": "bach",
            "root": str(root),
            "roi_dir": str(masks),
            "allow_subset": True,
            "image_size": [96, 128],
        },
        "protocol": {"folds": 3, "test_fraction": 0.25, "seed": 0},
        "baselines": [
            {"name": "gusa", "fixed": {"input_size": [96, 128], "batch_size": 4, "epochs_max": 2}},
            {"name": "amil", "fixed": {"epochs_max": 2}},
        ],
        "search": {"trials": 1, "max_epochs": 2, "grace_period": 1, "retrain": "none"},
        "floors": [],
        "output_dir": str(tmp_path / "results"),
    }
    _sweep(write_experiment(tmp_path / "attention.yaml", experiment))
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    everything = client.search_runs([client.get_experiment_by_name("attention").experiment_id])
    assert not [r for r in everything if r.data.tags.get(tracking.FLOOR)]  # floors: [] logs no floor run
    runs = {r.data.tags[tracking.BASELINE]: r for r in _trial_runs(tmp_path / "results", "attention")}
    assert set(runs) == {"gusa", "amil"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    for name, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags[tracking.ROI_SOURCE] == "files"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "test")}
        assert {"test/maps_best.png", "test/maps_worst.png"} <= artifacts, name
        assert "test_accuracy" in run.data.metrics
        assert {a.path for a in client.list_artifacts(run.info.run_id, "val")} >= {"val/predictions.csv"}
        assert run.data.tags[tracking.CPU_SHARE] == "1" and float(run.data.tags[tracking.GPU_SHARE]) >= 0
    # GuSA's RoI map is scored against the validation masks (001 Table II); A-MIL's bag grid is not.
    miou = runs["gusa"].data.metrics
    assert 0 <= miou["sel_val_miou_native"] <= 1 and 0 <= miou["sel_val_miou_full"] <= 1
    assert "sel_val_miou_native" not in runs["amil"].data.metrics
    # A-MIL's grid follows the data: a 96x128 image gives a 3 x 4 bag of 28-pixel patches.
    assert runs["amil"].data.params["epochs"] == "2"


def _shrink(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """Keep an experiment's baselines and protocol, but make the budget and images tiny."""
    config = {**config, "output_dir": str(root / "results")}
    # The fold retrain is tested on its own (test_cluster); here it would multiply the time by the folds.
    # Its epoch cap goes with it (the demo's is above this budget).
    search = {k: v for k, v in config["search"].items() if k != "retrain_epochs"}
    config["search"] = {**search, "trials": 1, "max_epochs": 1, "grace_period": 1, "retrain": "none"}
    config["resources"] = {"cpu": 1, "gpu": 0}
    dataset = dict(config["dataset"], allow_subset=True)
    if dataset["name"] != "idc":
        dataset["image_size"] = [96, 128]
    config["dataset"] = dataset
    small = [96, 128] if dataset["name"] != "idc" else 50
    shrunk = []
    for entry in config["baselines"]:
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        fixed = dict(entry.get("fixed", {}), epochs_max=1)
        if entry["name"] not in {"amil", "cancernet"}:
            fixed["input_size"] = small if entry["name"] != "efficientnetv2_s" else 64
        if entry["name"].startswith(("gusa", "attention", "rga")):
            fixed["batch_size"] = 4
        elif dataset["name"] == "idc":
            # One or two optimiser steps per epoch: VGG16's 134M parameters make each step seconds.
            fixed.setdefault("batch_size", 128)
        shrunk.append({**entry, "fixed": fixed})
    config["baselines"] = shrunk
    if dataset["name"] == "bach":
        config["protocol"] = {**config["protocol"], "folds": 3, "test_fraction": 0.25}
    return config


@pytest.fixture(scope="module")
def tiny_idc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IDC tree of 10 patients with 6 + 4 patches each: enough patients for five folds and a
    test set, few enough images that VGG16 or DenseNet-161 train an epoch in seconds on a CPU."""
    return write_synthetic_idc(tmp_path_factory.mktemp("tiny_idc"), patients=10, patches_per_class=(6, 4), seed=3)


@pytest.mark.parametrize("name", ["demo", "idc_comparison", "bach_gusa", "breakhis_amil"])
def test_shipped_experiment_runs_a_short_sweep(
    name: str,
    tmp_path: Path,
    tiny_idc: Path,
    synthetic_bach: tuple[Path, Path],
    synthetic_breakhis: Path,
    local_ray: None,
) -> None:
    config = yaml.safe_load((REPO / "experiments" / f"{name}.yaml").read_text())
    root = {"idc": tiny_idc, "bach": synthetic_bach[0], "breakhis": synthetic_breakhis}[config["dataset"]["name"]]
    path = write_experiment(tmp_path / f"{name}.yaml", _shrink(config, tmp_path))
    output = _sweep(path, "--root", str(root))
    runs = _trial_runs(tmp_path / "results", config["name"])
    assert len(runs) == len(config["baselines"])
    assert all(r.info.status == "FINISHED" for r in runs), output
    if name == "breakhis_amil":
        assert all("test_patient_accuracy" in r.data.metrics for r in runs)
    if name == "bach_gusa":
        assert {r.data.tags[tracking.ROI_SOURCE] for r in runs} == {"tissue"}
    # Its leaderboard: every table the file names, in every format, and the page with its plots.
    result = CliRunner().invoke(app, ["leaderboard", str(path), "--bootstrap", "200"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    written = {
        p.relative_to(tmp_path / "results" / config["name"]).as_posix()
        for p in (tmp_path / "results" / config["name"]).rglob("*")
        if p.is_file()
    }
    tables = config["leaderboard"]["tables"]
    assert {f"{t}.{ext}" for t in tables for ext in ("md", "tex", "csv")} <= written
    assert {
        "leaderboard.md",
        "leaderboard.tex",
        "leaderboard.html",
        "figures/roc.png",
        "figures/pareto.png",
        "figures/history.png",
        "figures/confusion.png",
    } <= written
    for table in tables:
        assert f"## {table}: " in result.output
