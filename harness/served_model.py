"""A trained model as MLflow serves it, computing what the harness scored.

A fold's network is ClassProbabilities (logged with `mlflow.pytorch` as a torch.export program):
the network with its input normalisation and softmax, on the inputs the harness's evaluation
transform makes (uint8, N x 3 x h x w; N x n x 3 x p x p for a bag). What is registered is
FoldEnsemble (a pyfunc model, logged from code: harness/ensemble_model.py) over one or more of
those programs, the winner's search fold alone or all its folds: it takes images as the harness
stores them (uint8 RGB, N x H x W x 3; an edge patch smaller than the stored size is padded as the
patch cache pads it), refuses anything else in one line naming what it expected, runs the
evaluation transform and every fold program in the harness's evaluation batches, and returns the
mean softmax under the class names.
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

from baselines import Encoder, EncoderRef
from harness.config import ComputeSpec, TrainParams
from harness.data.bags import bag_grid
from harness.data.cache import replicate_pad
from harness.data.dataset import BagDataset, ImageDataset, part_dataset
from harness.data.normalise import normalisation_constants
from harness.embeddings import STORED_DTYPE, embed_rows
from harness.environment import NO_PICKLED_MODELS, environment
from harness.errors import InputError
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


class EmbeddingProbabilities(nn.Module):
    """A probe head on an encoder's embeddings: float batch N x D -> softmax probabilities (N x C)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Return the class probabilities of a batch of embeddings."""
        return torch.softmax(self.head(embeddings.float())["logits"].float(), 1)


class InputMismatch(InputError):
    """Images a served model was not trained on: what it expected and what it was given."""


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
    # Patches stored as they are (IDC): a smaller edge patch is padded as the patch cache pads it.
    # Images the cache resized and stain-normalised (BACH, BreakHis) come at the stored size only.
    pads_edges: bool = False
    # A probe's encoder, by reference (its weights file and that file's digest, not a copy of the
    # weights): stored images -> embeddings -> the fold programs, which are heads on embeddings.
    encoder: EncoderRef | None = None

    def expected(self) -> str:
        """Return, in words, the images this recipe takes."""
        h, w = self.stored_hw
        edges = " (smaller edge patches are padded bottom and right, as the harness pads them)"
        return f"uint8 RGB images N x {h} x {w} x 3{edges if self.pads_edges else ''}"

    def stored(self, images: object) -> np.ndarray:
        """Return `images` as the harness stores them (uint8, edge patches padded to the stored
        size); raises InputMismatch, one line naming what was expected, for any other type, shape
        or dtype. Integers from 0 to 255 of another integer dtype are taken as uint8: JSON, which
        MLflow's model server reads, has no uint8."""
        if not isinstance(images, np.ndarray):
            got = type(images).__name__
        elif (
            images.ndim != 4
            or images.shape[-1] != 3
            or not self._fits(images.shape[1:3])
            or (images.dtype != np.uint8 and not _bytes(images))
        ):
            got = f"{images.dtype} array of shape {images.shape}"
        else:
            images = images.astype(np.uint8, copy=False)
            return replicate_pad(images, self.stored_hw) if self.pads_edges else images
        raise InputMismatch(f"expected {self.expected()}, got {got}")

    def _fits(self, hw: tuple[int, ...]) -> bool:
        if self.pads_edges:
            return all(0 < side <= stored for side, stored in zip(hw, self.stored_hw))
        return tuple(hw) == self.stored_hw

    def dataset(self, images: np.ndarray) -> ImageDataset | BagDataset:
        """Return stored images (N x H x W x 3 uint8) through the evaluation transform."""
        grid = bag_grid(*self.stored_hw) if self.bags else None
        rows, labels = np.arange(len(images)), np.zeros(len(images), dtype=np.int64)
        return part_dataset(images, rows, labels, self.params, grid=grid, train=False, seed=0, keras=self.keras)

    def model_inputs(self, images: np.ndarray, encoder: Encoder | None = None) -> np.ndarray:
        """Return the model inputs of stored images, as a fold model takes them (contiguous, as
        a DataLoader batch: a channels-last copy would send the convolutions down other kernels);
        a probe's are the embeddings of `encoder` (built from the reference when not given)."""
        if self.encoder is not None:
            built = encoder if encoder is not None else self.encoder.build()
            rows = np.arange(len(images))
            embedded = embed_rows(images, rows, built.eval(), device="cpu", batch_size=self.batch_size)
            # Rounded as the embedding cache stores them, so the heads see what the runs saw.
            return embedded.astype(STORED_DTYPE).astype(np.float32)
        dataset = self.dataset(images)
        return torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(len(dataset))]).numpy()


def _bytes(images: np.ndarray) -> bool:
    """Return True when `images` are integers that all fit a uint8."""
    return np.issubdtype(images.dtype, np.integer) and (images.size == 0 or 0 <= images.min() <= images.max() <= 255)


@dataclass
class ServedFold:
    """One fold's best model as served, how stored images become its inputs, and a few stored
    test images as its example."""

    module: ClassProbabilities | EmbeddingProbabilities
    recipe: InputRecipe
    stored_examples: np.ndarray
    # The module's inputs for the stored examples (the traced example of its program).
    example_inputs: np.ndarray


@torch.no_grad()
def probabilities(model: nn.Module, dataset: ImageDataset | BagDataset, batch_size: int) -> np.ndarray:
    """Return the class probabilities (N x C, float32) of `model` over `dataset`, in batches."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return np.concatenate([model(batch["image"]).cpu().numpy() for batch in loader])


def class_frame(probabilities: np.ndarray, classes: tuple[str, ...]) -> pd.DataFrame:
    """Return class probabilities (N x C) as one column per class name, and each image's
    `predicted` class name."""
    frame = pd.DataFrame(probabilities, columns=list(classes))
    frame["predicted"] = np.asarray(classes, dtype=object)[probabilities.argmax(1)]
    return frame


def served_config(recipe: InputRecipe, classes: tuple[str, ...]) -> dict[str, Any]:
    """Return a served model's configuration (its model_config and metadata): the input recipe and
    the class names, in class-index order."""
    return {"recipe": recipe.model_dump(mode="json"), "classes": list(classes)}


class FoldEnsemble(PythonModel):
    """The mean softmax of one or more fold models (the winner: its search fold's alone), on
    images as the harness stores them (N x H x W x 3 uint8), under the class names."""

    def load_context(self, context: Any) -> None:
        """Load the fold models (artifacts `fold_<k>`), the input recipe and the class names (model config)."""
        self.recipe = InputRecipe.model_validate(context.model_config["recipe"])
        self.classes = tuple(context.model_config["classes"])
        keys = sorted(context.artifacts, key=lambda k: int(k.removeprefix("fold_")))
        # Exported programs, traced in eval mode; refused if a pickle took their place.
        with environment(NO_PICKLED_MODELS):
            self.folds = [mlflow.pytorch.load_model(context.artifacts[k], map_location="cpu") for k in keys]
        # A probe's encoder is read from its weights file, refused in one line when the file's
        # bytes are not those the probe was trained on.
        self.encoder = self.recipe.encoder.build().eval() if self.recipe.encoder is not None else None

    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        """Return each image's mean fold softmax under the class names and its predicted class,
        computed at the run's thread count (so on the CPU they are the run's own numbers); raises
        InputMismatch for images of another type, shape or dtype than the run stored."""
        stored = self.recipe.stored(model_input)
        with torch_threads(self.recipe.threads):
            if self.encoder is not None:
                embeddings = torch.from_numpy(self.recipe.model_inputs(stored, self.encoder))
                with torch.no_grad():
                    folds = [f(embeddings).numpy() for f in self.folds]
            else:
                dataset = self.recipe.dataset(stored)
                folds = [probabilities(f, dataset, self.recipe.batch_size) for f in self.folds]
        return class_frame(mean_softmax(folds), self.classes)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with torch on `threads` CPU threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
