"""The winners' models as MLflow loads them: what they compute, for image and bag baselines alike."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from torch.utils.data import DataLoader

import baselines
from harness.config import TrainParams
from harness.data.bags import bag_grid
from harness.data.normalise import batch_normaliser
from harness.evaluation import mean_softmax, predict
from harness.model_registry import ENSEMBLE_CODE, ensemble_signature
from harness.served_model import ClassProbabilities, InputRecipe, torch_threads

CASES = {
    # CancerNet shrinks IDC's 50 px patches to 48 on the way in.
    "cancernet": ((50, 50), False, TrainParams(input_size=48, batch_size=2)),
    # A-MIL cuts a 96 x 128 image into a 3 x 4 bag of 28 px patches.
    "amil": ((96, 128), True, TrainParams(normalisation="imagenet")),
}


def _fold_models(baseline: str, recipe: InputRecipe, folds: int) -> list[ClassProbabilities]:
    kwargs = {}
    if recipe.bags:
        grid = bag_grid(*recipe.stored_hw)
        kwargs = {"grid_rows": grid.rows, "grid_cols": grid.cols}
    return [
        ClassProbabilities(baselines.create(baseline, num_classes=2, **kwargs), recipe.params.normalisation).eval()
        for _ in range(folds)
    ]


@pytest.mark.parametrize("baseline", sorted(CASES))
def test_the_ensemble_model_computes_what_the_harness_evaluates(baseline: str, tmp_path: Path) -> None:
    stored_hw, bags, params = CASES[baseline]
    recipe = InputRecipe(params=params, stored_hw=stored_hw, bags=bags, keras=False, batch_size=2, threads=1)
    images = np.random.default_rng(0).integers(0, 256, (5, *stored_hw, 3), dtype=np.uint8)
    folds = _fold_models(baseline, recipe, 2)
    # The harness's own evaluation: its loader, its normaliser, each fold's bare network.
    loader = DataLoader(recipe.dataset(images), batch_size=recipe.batch_size)
    normalise = batch_normaliser(params.normalisation, "cpu")
    with torch_threads(recipe.threads):
        expected = mean_softmax([predict(f.model, loader, normalise)[0] for f in folds])
    # As model_registry logs them: torch.export programs, the ensemble from code. Requirements
    # given: MLflow would otherwise load each model in a subprocess to infer them.
    example = recipe.model_inputs(images[:2])
    for k, fold in enumerate(folds):
        with torch.no_grad():
            signature = infer_signature(example, fold(torch.from_numpy(example)).numpy())
        mlflow.pytorch.save_model(
            fold,
            tmp_path / f"fold_{k}",
            serialization_format="pt2",
            signature=signature,
            input_example=example,
            pip_requirements=[],
        )
    mlflow.pyfunc.save_model(
        tmp_path / "ensemble",
        python_model=str(ENSEMBLE_CODE),
        artifacts={f"fold_{k}": str(tmp_path / f"fold_{k}") for k in range(len(folds))},
        model_config={"recipe": recipe.model_dump(mode="json")},
        signature=ensemble_signature(recipe, 2),
        input_example=images[:2],
        pip_requirements=[],
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "ensemble"))
    served = model.predict(images)
    assert list(served.columns) == ["prob_0", "prob_1", "pred"]
    assert np.array_equal(served[["prob_0", "prob_1"]].to_numpy(), expected)
    assert served.pred.tolist() == expected.argmax(1).tolist()
    # Model inputs one fold module takes: the evaluation transform's output.
    assert recipe.model_inputs(images).shape == ((5, 12, 3, 28, 28) if bags else (5, 3, 48, 48))
    with pytest.raises(MlflowException, match="uint8"):
        model.predict(images.astype(np.float32))
