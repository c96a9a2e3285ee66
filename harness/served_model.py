"""A trained model as MLflow serves it, computing what the harness scored.

A fold model is ClassProbabilities (logged with `mlflow.pytorch` as a torch.export program): the
network with its input normalisation and softmax, on the inputs the harness's evaluation
transform makes (uint8, N x 3 x h x w; N x n x 3 x p x p for a bag). A winner's fold ensemble is
FoldEnsemble (a pyfunc model, logged from code: harness/ensemble_model.py): on images as the
harness stores them (uint8, N x H x W x 3) it runs the evaluation transform and every fold model
in the harness's evaluation batches, and averages their softmax.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import DataLoader

from harness.config import ComputeSpec, TrainParams
from harness.data.bags import bag_grid
from harness.data.dataset import BagDataset, ImageDataset, part_dataset
from harness.data.normalise import normalisation_constants
from harness.environment import NO_PICKLED_MODELS, environment
from harness.evaluation import mean_softmax
from harness.precision import autocast


class ClassProbabilities(nn.Module):
    """A baseline on the harness's model inputs: uint8 batch -> softmax probabilities (N x C),
    normalised and computed as the harness's evaluation does."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, model: nn.Module, normalisation: str, compute: ComputeSpec | None = None) -> None:
        super().__init__()
        self.model = model
        mean, scale = normalisation_constants(normalisation)
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)
        # The run's precision and memory layout, so that it computes what the run evaluated.
        compute = compute or ComputeSpec()
        self.precision, self.channels_last = compute.precision, compute.channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the class probabilities of a uint8 batch."""
        x = images.to(self.mean.device).float().sub_(self.mean).mul_(self.scale)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, str(x.device))():
            logits = self.model(x)["logits"]
        return torch.softmax(logits.float(), 1)


class InputRecipe(BaseModel):
    """How images as the harness stores them become a fold model's inputs: the run's parameters
    (input size, resize), the stored size, bags or not, and the evaluation batch size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: TrainParams
    stored_hw: tuple[int, int]
    bags: bool
    keras: bool
    batch_size: int
    # The CPU threads the run evaluated with: the thread count changes how float sums are split,
    # so the run's probabilities come back bit for bit only at this count.
    threads: int

    def dataset(self, images: np.ndarray) -> ImageDataset | BagDataset:
        """Return stored images (N x H x W x 3 uint8) through the evaluation transform."""
        grid = bag_grid(*self.stored_hw) if self.bags else None
        rows, labels = np.arange(len(images)), np.zeros(len(images), dtype=np.int64)
        return part_dataset(images, rows, labels, self.params, grid=grid, train=False, seed=0, keras=self.keras)

    def model_inputs(self, images: np.ndarray) -> np.ndarray:
        """Return the model inputs of stored images, as a fold model takes them (contiguous, as
        a DataLoader batch: a channels-last copy would send the convolutions down other kernels)."""
        dataset = self.dataset(images)
        return torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(len(dataset))]).numpy()


@dataclass
class ServedFold:
    """One fold's best model as served, how stored images become its inputs, and a few stored
    test images as its example."""

    module: ClassProbabilities
    recipe: InputRecipe
    stored_examples: np.ndarray


@torch.no_grad()
def probabilities(model: nn.Module, dataset: ImageDataset | BagDataset, batch_size: int) -> np.ndarray:
    """Return the class probabilities (N x C, float32) of `model` over `dataset`, in batches."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return np.concatenate([model(batch["image"]).cpu().numpy() for batch in loader])


def prediction_frame(mean: np.ndarray) -> pd.DataFrame:
    """Return the ensemble's output: `prob_<class>` columns and the predicted class `pred`."""
    return pd.DataFrame({**{f"prob_{c}": mean[:, c] for c in range(mean.shape[1])}, "pred": mean.argmax(1)})


class FoldEnsemble(PythonModel):
    """The mean softmax of a winner's fold models, on stored images (N x H x W x 3 uint8)."""

    def load_context(self, context: Any) -> None:
        """Load the fold models (artifacts `fold_<k>`) and the input recipe (model config)."""
        self.recipe = InputRecipe.model_validate(context.model_config["recipe"])
        keys = sorted(context.artifacts, key=lambda k: int(k.removeprefix("fold_")))
        # Exported programs, traced in eval mode; refused if a pickle took their place.
        with environment(NO_PICKLED_MODELS):
            self.folds = [mlflow.pytorch.load_model(context.artifacts[k], map_location="cpu") for k in keys]

    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        """Return each image's mean fold softmax and predicted class, computed at the run's
        thread count (so on the CPU they are the run's own numbers)."""
        dataset = self.recipe.dataset(np.asarray(model_input, dtype=np.uint8))
        with torch_threads(self.recipe.threads):
            folds = [probabilities(f, dataset, self.recipe.batch_size) for f in self.folds]
        return prediction_frame(mean_softmax(folds))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with torch on `threads` CPU threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
