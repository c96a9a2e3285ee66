"""Experiment and search-space files: shipped ones validate, bad ones fail with one clear line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import baselines
from harness import config as config_module
from harness.cli import app
from harness.config import SEARCH_SPACES_DIR, load_experiment, load_search_space, split_point
from harness.errors import InputError
from harness.sweep._record import check_resumable, config_fingerprint, space_fingerprints
from harness.sweep._search import recipe_start_point

from .conftest import REPO, experiment_dict, write_experiment


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_validates(
    path: Path, synthetic_idc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Weights files are the user's: stand-ins at the paths the file names (relative to the working
    # directory), a small state dict each, which the check at load reads the first bytes of.
    monkeypatch.chdir(tmp_path)
    for entry in yaml.safe_load(path.read_text())["baselines"]:
        if isinstance(entry, dict) and entry.get("pretrained"):
            (tmp_path / entry["pretrained"]).parent.mkdir(parents=True, exist_ok=True)
            torch.save({"w": torch.zeros(1)}, tmp_path / entry["pretrained"])
    config = load_experiment(REPO / path, dataset_root=synthetic_idc)
    assert config.baselines


@pytest.mark.parametrize("name", baselines.list())
def test_every_baseline_has_a_search_space_with_a_valid_recipe(name: str) -> None:
    space = load_search_space(name)
    params, _ = split_point({**space.recipe, **space.fixed})
    assert params.lr == space.recipe["lr"]
    assert (SEARCH_SPACES_DIR / f"{name}.yaml").is_file()


def test_cancernet_recipe_is_a_point_of_its_space() -> None:
    start, reason = recipe_start_point(load_search_space("cancernet"))
    assert start == {"lr": 0.01, "batch_size": 32, "dropout_conv": 0.25, "dropout_fc": 0.5, "epochs_max": 40}
    assert reason == "the recipe is the first point"


def test_resnet18_recipe_lies_outside_only_through_weight_decay() -> None:
    # 004 used no weight decay; BASELINES.md §2.3 searches it on a log scale from 1e-6.
    start, reason = recipe_start_point(load_search_space("resnet18"))
    assert start is None and reason == "the recipe's weight_decay=0.0 lies outside the searched range"


def _bad(tmp_path: Path, synthetic_idc: Path, **sections) -> Path:
    return write_experiment(tmp_path / "exp.yaml", experiment_dict(synthetic_idc, tmp_path / "out", **sections))


TWO_BLOCKS = "timm:vit_tiny_patch16_224"
TWO_BLOCK_ENCODER = {"encoder": TWO_BLOCKS, "encoder_arch": {"depth": 2}}
BLOCKS_0_TO_5 = {"type": "int", "low": 0, "high": 5, "step": 2}
NAME_EXPECTED = "expected one folder name of letters, digits, '_', '.' and '-', not '.' or '..'"
BAD_INPUTS = {
    "a name one folder up": ({"name": ".."}, f"exp.yaml: key 'name' = '..': {NAME_EXPECTED}"),
    "a name of this folder": ({"name": "."}, f"exp.yaml: key 'name' = '.': {NAME_EXPECTED}"),
    "a name with a path separator": ({"name": "a/../.."}, f"exp.yaml: key 'name' = 'a/../..': {NAME_EXPECTED}"),
    "an empty name": ({"name": ""}, f"exp.yaml: key 'name' = '': {NAME_EXPECTED}"),
    "unknown key": (
        {"search": {"trials": 2, "trails": 3}},
        "exp.yaml: key 'search.trails': unknown key",
    ),
    "wrong type": (
        {"search": {"trials": "many"}},
        "exp.yaml: key 'search.trials' = 'many': Input should be a valid integer",
    ),
    "unknown baseline": (
        {"baselines": ["cancernet", "resnet19"]},
        "exp.yaml: key 'baselines[1].name' = 'resnet19': unknown baseline 'resnet19'; did you mean resnet18, ",
    ),
    "unknown pinned hyperparameter": (
        {"baselines": [{"name": "cancernet", "fixed": {"lrr": 0.1}}]},
        "exp.yaml: key 'baselines[0].fixed.lrr': not a hyperparameter of cancernet",
    ),
    "freeze without weights": (
        {"baselines": ["resnet18"]},
        "exp.yaml: key 'baselines[0].fixed.freeze': resnet18 has no pretrained weights file",
    ),
    "RoI model on a dataset without masks": (
        {"baselines": ["gusa"]},
        "exp.yaml: key 'baselines[0].name' = 'gusa': gusa trains with an RoI mask per image (loss ce_dice) "
        "and dataset idc has no RoI masks",
    ),
    "bag model on an image dataset": (
        {"baselines": ["cancernet", "amil"]},
        "exp.yaml: key 'baselines[1].name' = 'amil': amil takes bags of patches and dataset idc gives images",
    ),
    "unknown searched hyperparameter": (
        {"baselines": [{"name": "cancernet", "search": {"momentumm": {"type": "uniform", "low": 0, "high": 1}}}]},
        "exp.yaml: key 'baselines[0].search.momentumm': not a hyperparameter of cancernet",
    ),
    "brute force over a continuous range": (
        {"search": {"sampler": "bruteforce"}},
        "exp.yaml: key 'search.sampler' = 'bruteforce': cancernet searches dropout_conv over a continuous range",
    ),
    "a fold retrain longer than the search's budget": (
        {"search": {"max_epochs": 2, "retrain_epochs": 3}},
        "exp.yaml: key 'search': retrain_epochs (3) must not exceed max_epochs (2)",
    ),
    "a journal storage at a relative path": (
        {"search": {"optuna_storage": "journal://optuna.log"}},
        "exp.yaml: key 'search.optuna_storage' = 'journal://optuna.log': a journal storage is "
        "journal:///<absolute path of its log file>",
    ),
    "unknown sampler": (
        {"search": {"sampler": "cmaes"}},
        "exp.yaml: key 'search.sampler' = 'cmaes': Input should be 'tpe', 'random', 'gp', 'qmc' or 'bruteforce'",
    ),
    "unknown dataset": (
        {"dataset": {"name": "idc2", "root": "."}},
        "exp.yaml: key 'dataset.name' = 'idc2': unknown dataset 'idc2'; did you mean idc? (registered: bach, ",
    ),
    "an option of another dataset": (
        {"dataset": {"name": "idc", "root": ".", "magnification": 40}},
        "exp.yaml: key 'dataset': magnification applies to breakhis only, not to idc",
    ),
    "unknown augmentation": (
        {"baselines": [{"name": "cancernet", "fixed": {"augment": "mixup"}}]},
        "exp.yaml: key 'baselines[0].fixed.augment' = 'mixup': unknown augmentation 'mixup'; known: none, flips, ",
    ),
    "unknown augmentation among searched choices": (
        {"baselines": [{"name": "cancernet", "search": {"augment": {"type": "categorical", "choices": ["pis", "x"]}}}]},
        "exp.yaml: key 'baselines[0].search.augment' = 'x': unknown augmentation 'x'; known: none, flips, ",
    ),
    "missing weights file": (
        {"baselines": [{"name": "resnet18", "pretrained": "/nowhere/w.pth", "fixed": {"freeze": "none"}}]},
        "exp.yaml: key 'baselines[0].pretrained' = '/nowhere/w.pth': pretrained weights file '/nowhere/w.pth' does "
        "not exist (weights are never downloaded)",
    ),
    "unknown encoder": (
        {"baselines": [{"name": "linear_probe", "fixed": {"encoder": "uni2h"}}]},
        "exp.yaml: key 'baselines[0].fixed.encoder' = 'uni2h': unknown encoder 'uni2h'; did you mean uni2_h, uni? ",
    ),
    "unknown encoder among searched ones": (
        {
            "baselines": [
                {"name": "linear_probe", "search": {"encoder": {"type": "categorical", "choices": ["uni", "x"]}}}
            ]
        },
        "exp.yaml: key 'baselines[0].search.encoder' = 'x': unknown encoder 'x'",
    ),
    "encoder overrides timm cannot build": (
        {"baselines": [{"name": "linear_probe", "fixed": {"encoder": TWO_BLOCKS, "encoder_arch": {"bogus": 1}}}]},
        f"exp.yaml: key 'baselines[0].fixed.encoder_arch' = {{'bogus': 1}}: timm cannot build '{TWO_BLOCKS}' with it (",
    ),
    # finetune.yaml searches blocks over 0, 1, 2, 4 and 8: the deepest is refused, not each trial that draws it.
    "a fine-tune searched deeper than its encoder": (
        {"baselines": [{"name": "finetune", "fixed": TWO_BLOCK_ENCODER}]},
        f"exp.yaml: key 'baselines[0].search.blocks' = 4: encoder '{TWO_BLOCKS}' has 2 blocks; "
        "set baselines[0].search.blocks to whole numbers from 0 (all) to 2",
    ),
    # 0 to 5 in steps of 2: Optuna proposes 4 at most.
    "a fine-tune's range of blocks deeper than its encoder": (
        {"baselines": [{"name": "finetune", "fixed": TWO_BLOCK_ENCODER, "search": {"blocks": BLOCKS_0_TO_5}}]},
        f"exp.yaml: key 'baselines[0].search.blocks' = 4: encoder '{TWO_BLOCKS}' has 2 blocks",
    ),
    "a fine-tune pinned deeper than its encoder": (
        {"baselines": [{"name": "finetune", "fixed": {**TWO_BLOCK_ENCODER, "blocks": 3}}]},
        f"exp.yaml: key 'baselines[0].fixed.blocks' = 3: encoder '{TWO_BLOCKS}' has 2 blocks",
    ),
    "a fine-tune of an encoder without blocks": (
        {"baselines": [{"name": "finetune", "fixed": {"encoder": "timm:vgg11"}}]},
        "exp.yaml: key 'baselines[0].fixed.encoder' = 'timm:vgg11': timm's architecture lists no blocks or stages",
    ),
    "a file that is no weights file": (
        {"baselines": [{"name": "resnet18", "pretrained": "/etc/passwd", "fixed": {"freeze": "none"}}]},
        "exp.yaml: key 'baselines[0].pretrained' = '/etc/passwd': weights file '/etc/passwd' is not a file "
        "torch.save wrote (nor .safetensors)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_experiment_exits_2_with_one_line_and_writes_nothing(
    case: str, tmp_path: Path, synthetic_idc: Path
) -> None:
    sections, message = BAD_INPUTS[case]
    path = _bad(tmp_path, synthetic_idc, **sections)
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_fine_tune_within_its_encoders_depth_loads(tmp_path: Path, synthetic_idc: Path) -> None:
    blocks = {"type": "categorical", "choices": [0, 1, 2]}
    baseline = {"name": "finetune", "fixed": TWO_BLOCK_ENCODER, "search": {"blocks": blocks}}
    path = _bad(tmp_path, synthetic_idc, baselines=[baseline])
    [spec] = load_experiment(path).baselines
    assert spec.search["blocks"].values() == [0, 1, 2]


def test_missing_experiment_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope.yaml'}: file not found" in result.stderr


def test_dataset_root_without_images_exits_2_and_writes_nothing(tmp_path: Path, synthetic_idc: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    path = _bad(tmp_path, synthetic_idc)
    result = CliRunner().invoke(app, ["sweep", str(path), "--root", str(empty)])
    assert result.exit_code == 2
    assert f"{empty}: no IDC patches found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_protocol_the_data_cannot_meet_exits_2_and_writes_nothing(tmp_path: Path, synthetic_idc: Path) -> None:
    path = _bad(tmp_path, synthetic_idc, protocol={"folds": 19, "test_fraction": 0.25})
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2
    assert "20 patients cannot make a 1/4 test set plus 19 folds" in result.stderr
    assert not (tmp_path / "out").exists()


def test_models_command_lists_every_baseline_with_its_counts() -> None:
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "220"})
    assert result.exit_code == 0
    for name in baselines.list():
        assert f"│ {name} " in result.output
    assert "19,368,390 (weights_only)" in result.output and "19,368,390 = published" in result.output
    assert "6,879,301 differs" in result.output


def test_trial_resources_come_from_the_space_then_the_experiment_then_the_baseline(
    tmp_path: Path, synthetic_idc: Path
) -> None:
    data = experiment_dict(
        synthetic_idc,
        tmp_path / "out",
        resources={"cpu": 2},
        baselines=["cancernet", {"name": "idc_cnn", "resources": {"gpu": 1}}],
    )
    config = load_experiment(write_experiment(tmp_path / "e.yaml", data))
    cancernet, idc_cnn = (config.trial_resources(n, load_search_space(n).resources) for n in ("cancernet", "idc_cnn"))
    assert (cancernet.cpu, cancernet.gpu) == (2, 0.25)
    assert (idc_cnn.cpu, idc_cnn.gpu) == (2, 1)


def test_an_experiment_narrows_a_searched_range(tmp_path: Path, synthetic_idc: Path) -> None:
    narrowed = {"type": "categorical", "choices": [32, 64]}
    data = experiment_dict(
        synthetic_idc,
        tmp_path / "out",
        baselines=[{"name": "cancernet", "search": {"batch_size": narrowed}, "fixed": {"lr": 0.01}}],
    )
    config = load_experiment(write_experiment(tmp_path / "e.yaml", data))
    space = config.baseline_space("cancernet")
    assert space.search["batch_size"].choices == [32, 64]
    assert "lr" not in space.search and space.fixed["lr"] == 0.01


def test_resume_refuses_a_search_space_file_edited_since_the_sweep_started(
    tmp_path: Path, synthetic_idc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spaces = tmp_path / "search_spaces"
    shutil.copytree(SEARCH_SPACES_DIR, spaces)
    monkeypatch.setattr(config_module, "SEARCH_SPACES_DIR", spaces)
    path = write_experiment(tmp_path / "e.yaml", experiment_dict(synthetic_idc, tmp_path / "out"))
    started = load_experiment(path)
    record = {"fingerprint": config_fingerprint(started), "spaces": space_fingerprints(started)}
    assert list(record["spaces"]) == [str(spaces / "cancernet.yaml")]
    check_resumable(load_experiment(path), record, "sweep-1")

    text = (spaces / "cancernet.yaml").read_text()
    edited = re.sub(r"(lr:\s*\{[^}]*high:\s*)[0-9.e+-]+", r"\g<1>0.09", text, count=1)
    assert edited != text
    (spaces / "cancernet.yaml").write_text(edited)
    # The config loaded before the edit keeps the space it read; a new load sees the edit.
    assert started.baseline_space("cancernet").search["lr"].high != 0.09
    with pytest.raises(
        InputError,
        match=rf"--resume: search space file {re.escape(str(spaces))}/cancernet\.yaml "
        r"changed since sweep-1 started",
    ):
        check_resumable(load_experiment(path), record, "sweep-1")
