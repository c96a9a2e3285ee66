"""The winners' models as MLflow loads them: what they compute, for image and bag baselines alike,
the input they refuse, and `harness predict` over a folder of images."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.models import infer_signature
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import baselines
from harness.cli import app
from harness.config import TrainParams
from harness.data.bags import bag_grid
from harness.data.cache import load_padded
from harness.data.normalise import batch_normaliser
from harness.evaluation import mean_softmax, predict
from harness.model_registry import ENSEMBLE_CODE, served_signature
from harness.served_model import ClassProbabilities, InputMismatch, InputRecipe, served_config, torch_threads

CLASSES = ("non_idc", "idc")
CASES = {
    # CancerNet shrinks IDC's 50 px patches to 48 on the way in; edge patches are padded to 50.
    "cancernet": ((50, 50), False, True, TrainParams(input_size=48, batch_size=2)),
    # A-MIL cuts a 96 x 128 image into a 3 x 4 bag of 28 px patches.
    "amil": ((96, 128), True, False, TrainParams(normalisation="imagenet")),
}


def _recipe(baseline: str) -> InputRecipe:
    stored_hw, bags, pads_edges, params = CASES[baseline]
    return InputRecipe(
        params=params, stored_hw=stored_hw, bags=bags, keras=False, batch_size=2, threads=1, pads_edges=pads_edges
    )


def _fold_models(baseline: str, recipe: InputRecipe, folds: int) -> list[ClassProbabilities]:
    kwargs = {}
    if recipe.bags:
        grid = bag_grid(*recipe.stored_hw)
        kwargs = {"grid_rows": grid.rows, "grid_cols": grid.cols}
    torch.manual_seed(0)
    return [
        ClassProbabilities(baselines.create(baseline, num_classes=2, **kwargs), recipe.params.normalisation).eval()
        for _ in range(folds)
    ]


def _evaluated(folds: list[ClassProbabilities], recipe: InputRecipe, images: np.ndarray) -> np.ndarray:
    """Return the mean softmax as the harness's own evaluation computes it: its loader, its
    normaliser, each fold's bare network."""
    loader = DataLoader(recipe.dataset(images), batch_size=recipe.batch_size)
    normalise = batch_normaliser(recipe.params.normalisation, "cpu")
    with torch_threads(recipe.threads):
        return mean_softmax([predict(f.model, loader, normalise)[0] for f in folds])


def _save_served(folds: list[ClassProbabilities], recipe: InputRecipe, images: np.ndarray, folder: Path) -> Path:
    """Save the fold models and the served model over them as model_registry logs them: torch.export
    programs, the served model from code. Requirements given: MLflow would otherwise load each
    model in a subprocess to infer them."""
    example = recipe.model_inputs(images[:2])
    for k, fold in enumerate(folds):
        with torch.no_grad():
            signature = infer_signature(example, fold(torch.from_numpy(example)).numpy())
        mlflow.pytorch.save_model(
            fold,
            folder / f"fold_{k}",
            serialization_format="pt2",
            signature=signature,
            input_example=example,
            pip_requirements=[],
        )
    config = served_config(recipe, CLASSES)
    mlflow.pyfunc.save_model(
        folder / "served",
        python_model=str(ENSEMBLE_CODE),
        artifacts={f"fold_{k}": str(folder / f"fold_{k}") for k in range(len(folds))},
        model_config=config,
        signature=served_signature(CLASSES),
        input_example=images[:2],
        pip_requirements=[],
        metadata=config,
    )
    return folder / "served"


@pytest.mark.parametrize("baseline", sorted(CASES))
def test_the_served_model_computes_what_the_harness_evaluates(baseline: str, tmp_path: Path) -> None:
    recipe = _recipe(baseline)
    images = np.random.default_rng(0).integers(0, 256, (5, *recipe.stored_hw, 3), dtype=np.uint8)
    folds = _fold_models(baseline, recipe, 2)
    expected = _evaluated(folds, recipe, images)
    model = mlflow.pyfunc.load_model(str(_save_served(folds, recipe, images, tmp_path)))
    served = model.predict(images)
    assert list(served.columns) == [*CLASSES, "predicted"]
    assert np.array_equal(served[list(CLASSES)].to_numpy(), expected)
    assert served.predicted.tolist() == [CLASSES[i] for i in expected.argmax(1)]
    # Model inputs one fold module takes: the evaluation transform's output.
    assert recipe.model_inputs(images).shape == ((5, 12, 3, 28, 28) if recipe.bags else (5, 3, 48, 48))
    # No torch flavour: the registered entry point is the pyfunc, which resizes and normalises itself.
    assert set(model.metadata.flavors) == {"python_function"}


@pytest.mark.parametrize("baseline", sorted(CASES))
def test_input_the_model_was_not_trained_on_is_refused_in_one_line(baseline: str, tmp_path: Path) -> None:
    recipe = _recipe(baseline)
    h, w = recipe.stored_hw
    images = np.random.default_rng(1).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    model = mlflow.pyfunc.load_model(str(_save_served(_fold_models(baseline, recipe, 1), recipe, images, tmp_path)))
    wrong = {
        "float32 array of shape": images.astype(np.float32),
        f"uint8 array of shape (2, 3, {h}, {w})": images.transpose(0, 3, 1, 2).copy(),
        f"uint8 array of shape (2, {h + 2}, {w + 2}, 3)": np.zeros((2, h + 2, w + 2, 3), np.uint8),
        "got DataFrame": pd.DataFrame({"a": [1]}),
        f"int64 array of shape (2, {h}, {w}, 3)": images.astype(np.int64) * 2,
    }
    for got, given in wrong.items():
        with pytest.raises(InputMismatch) as refused:
            model.predict(given)
        message = str(refused.value)
        assert message.startswith(f"expected uint8 RGB images N x {h} x {w} x 3") and got in message
        assert "\n" not in message and len(message) < 200
    # JSON, which MLflow's model server reads, has no uint8: integers from 0 to 255 are taken as such.
    assert model.predict(images.astype(np.int64)).equals(model.predict(images))


def test_an_edge_patch_is_padded_as_the_harness_pads_it(tmp_path: Path) -> None:
    recipe = _recipe("cancernet")
    edge = np.random.default_rng(2).integers(0, 256, (3, 50, 40, 3), dtype=np.uint8)
    padded = np.pad(edge, ((0, 0), (0, 0), (0, 10), (0, 0)), mode="edge")
    folds = _fold_models("cancernet", recipe, 1)
    model = mlflow.pyfunc.load_model(str(_save_served(folds, recipe, padded, tmp_path)))
    served = model.predict(edge)
    assert np.array_equal(served[list(CLASSES)].to_numpy(), _evaluated(folds, recipe, padded))
    # An image dataset's images were resized into the cache: only the stored size is taken.
    with pytest.raises(InputMismatch, match=r"expected uint8 RGB images N x 50 x 50 x 3, got uint8 array"):
        recipe.model_copy(update={"pads_edges": False}).stored(edge)


@pytest.fixture(scope="module")
def patch_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[ClassProbabilities]]:
    """A folder of IDC-like PNG patches (one a 50 x 40 edge patch, one in a subfolder), and a
    served CancerNet of two folds over them."""
    tmp = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(3)
    folder = tmp / "patches"
    (folder / "p1").mkdir(parents=True)
    for name, (h, w) in {"a.png": (50, 50), "b_edge.png": (50, 40), "p1/c.png": (50, 50)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    recipe = _recipe("cancernet")
    folds = _fold_models("cancernet", recipe, 2)
    examples = np.stack([load_padded(folder / "a.png", 50)[0]] * 2)
    return folder, _save_served(folds, recipe, examples, tmp / "model"), folds


def test_harness_predict_the_pyfunc_and_the_evaluation_give_the_same_probabilities(patch_folder, tmp_path) -> None:
    folder, model_path, folds = patch_folder
    result = CliRunner().invoke(app, ["predict", str(model_path), str(folder), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(tmp_path / "p.csv")
    assert list(written.columns) == ["file", *CLASSES, "predicted"]
    assert written.file.tolist() == ["a.png", "b_edge.png", "p1/c.png"]
    # The patches as the patch cache stores them: the edge patch replicate-padded.
    stored = np.stack([load_padded(folder / name, 50)[0] for name in written.file])
    served = mlflow.pyfunc.load_model(str(model_path)).predict(stored)
    evaluated = _evaluated(folds, _recipe("cancernet"), stored)
    # Written as float32 text, read back as float64: equal once back in float32.
    assert np.array_equal(written[list(CLASSES)].to_numpy().astype(np.float32), evaluated)
    assert np.array_equal(served[list(CLASSES)].to_numpy(), evaluated)
    assert written.predicted.tolist() == served.predicted.tolist()


def test_harness_predict_refuses_bad_input_in_one_line(patch_folder, tmp_path: Path) -> None:
    folder, model_path, _ = patch_folder
    (tmp_path / "empty").mkdir()
    big, unreadable = tmp_path / "big", tmp_path / "unreadable"
    big.mkdir(), unreadable.mkdir()
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(big / "x.png")
    (unreadable / "x.png").write_bytes(b"not an image")
    cases = {
        str(tmp_path / "nowhere"): f"{tmp_path / 'nowhere'}: no such folder",
        str(tmp_path / "empty"): f"{tmp_path / 'empty'}: no images (expected files ending in .png",
        str(big): f"{big / 'x.png'}: a 60 x 60 image; the model expects uint8 RGB images N x 50 x 50 x 3",
        str(unreadable): f"{unreadable / 'x.png'}: not a readable image (UnidentifiedImageError)",
    }
    for given, message in cases.items():
        result = CliRunner().invoke(app, ["predict", str(model_path), given])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    missing = CliRunner().invoke(app, ["predict", str(tmp_path / "no-model"), str(folder)])
    assert missing.exit_code == 2 and len(missing.stderr.strip().splitlines()) == 1
    # A registered name needs a store: none is created where there is none.
    store = tmp_path / "none" / "mlflow.db"
    uri = f"sqlite:///{store}"
    nowhere = CliRunner().invoke(app, ["predict", "models:/demo-cancernet@winner", str(folder), "--tracking-uri", uri])
    assert nowhere.exit_code == 2 and f"{uri}: no MLflow store there" in nowhere.stderr and not store.exists()
