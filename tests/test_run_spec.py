"""One description of a run: a sweep's recipe trial and `harness train` of the recipe build the same
RunSpec for every shipped baseline, and every key of the recipe reaches it."""

from __future__ import annotations

from pathlib import Path

import pytest

import baselines
from harness.config import ExperimentConfig, load_experiment, load_search_space
from harness.data.prepare import PreparedData, index_dataset, prepare
from harness.run_spec import RunSpec
from harness.sweep._nodes import current_node
from harness.sweep._search import recipe_start_point, start_points
from harness.sweep._trial import SweepContext, node_spec

from .conftest import experiment_dict, write_experiment


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path) -> PreparedData:
    config = _config(tmp_path_factory.mktemp("spec"), synthetic_idc, "cancernet")
    manifest, _ = index_dataset(config.dataset)
    return prepare(manifest, config.dataset, config.protocol, config.output_dir / "_data")


def _config(folder: Path, root: Path, name: str) -> ExperimentConfig:
    """Return an experiment of baseline `name` on a dataset it can train on. Without a weights file
    nothing may be frozen, and a recipe value the shipped space cannot propose (weight_decay 0 below
    a log range) is pinned, so that the recipe is the sweep's first point."""
    entry, space = baselines.info(name), load_search_space(name)
    images = entry.needs_roi or entry.input_kind == "bag"
    dataset = {"name": "bach", "roi_fallback": "tissue"} if images else {"name": "idc"}
    pins = {
        k: space.recipe[k] for k, d in space.search.items() if k in space.recipe and not d.contains(space.recipe[k])
    }
    if "freeze" in space.keys():
        pins["freeze"] = "none"
    sections = {
        "dataset": {**dataset, "root": str(root), "allow_subset": True},
        "baselines": [{"name": name, "fixed": pins}],
        "search": {"trials": 1},
    }
    return load_experiment(write_experiment(folder / f"{name}.yaml", experiment_dict(root, folder, **sections)))


@pytest.mark.parametrize("name", baselines.list_baselines())
def test_the_recipe_trial_builds_the_run_harness_train_builds(
    name: str, tmp_path: Path, synthetic_idc: Path, prepared: PreparedData
) -> None:
    config = _config(tmp_path, synthetic_idc, name)
    space = config.baseline_space(name)
    recipe, why = recipe_start_point(space)
    assert recipe is not None and start_points(space, [])[0] == recipe, why
    ctx = SweepContext(config, prepared, prepared.manifest_path.parents[1], "sqlite://", "0", "p", {}, {})
    trial = node_spec(ctx, name, recipe, config.protocol.search_fold, current_node(), config.training.device)
    train = RunSpec.build(config, prepared, name, fold=config.protocol.search_fold)
    # Where the data lie and which device trains are the node's own (under Ray, "auto" is the
    # device Ray granted); everything else is the same run.
    assert trial.on_node(train.data, train.training.device) == train
    logged = train.logged_params()
    # Every key of the published recipe reaches the run, unless the experiment pinned it.
    for key, value in space.recipe.items():
        assert logged[key] == (space.fixed[key] if key in space.fixed else value), key


def test_a_recipe_key_neither_searched_nor_pinned_reaches_every_trial(
    tmp_path: Path, synthetic_idc: Path, prepared: PreparedData
) -> None:
    # idc_cnn's recipe trains an unweighted loss (its sampling was 1:1); class_weights is not searched.
    config = _config(tmp_path, synthetic_idc, "idc_cnn")
    assert "class_weights" not in config.baseline_space("idc_cnn").search
    other = RunSpec.build(config, prepared, "idc_cnn", fold=0, point={"optimizer": "adam", "lr": 3e-4})
    assert other.params.class_weights == "none" and other.params.optimizer == "adam"
