"""What a finished model produced, and nothing about training it: predictions over a set of images,
their metrics and confusion matrix, the fold ensemble's mean softmax, and the explanation-map
gallery of its best and worst predictions. Floors, the fold retrain, tracking and the leaderboard
read these types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from baselines.maps import explanation_maps
from harness.data.dataset import BagDataset, ImageDataset
from harness.metrics import classification_metrics, confusion, grouped_accuracies

Normaliser = Callable[[torch.Tensor], torch.Tensor]
Batches = Iterable[dict[str, torch.Tensor]]  # a DataLoader's, or device-resident ones


@dataclass
class MapGallery:
    """Explanation maps of a few images: the images as stored, their maps in [0, 1], captions."""

    kind: str
    images: np.ndarray
    maps: np.ndarray
    captions: list[str]


@dataclass
class Evaluation:
    """Metrics, confusion matrix and per-image probabilities of one model on one set of images;
    on the test set also map galleries of its best and worst predictions."""

    metrics: dict[str, float]
    confusion: np.ndarray
    predictions: pd.DataFrame
    galleries: dict[str, MapGallery] = field(default_factory=dict)


@torch.no_grad()
def predict(model: nn.Module, loader: Batches, normalise: Normaliser) -> tuple[np.ndarray, np.ndarray]:
    """Return (softmax probabilities N x C, labels N) of `model` over `loader`."""
    model.eval()
    probs, labels = [], []
    for batch in loader:
        logits = model(normalise(batch["image"]))["logits"]
        # Kept on the device until the end: a copy to the host per batch waits for each batch.
        probs.append(torch.softmax(logits.float(), 1))
        labels.append(batch["label"])
    return torch.cat(probs).cpu().numpy(), torch.cat(labels).cpu().numpy()


def evaluate(model: nn.Module, loader: Batches, normalise: Normaliser, frame: pd.DataFrame) -> Evaluation:
    """Return metrics (with unweighted cross-entropy `loss`) and predictions for the rows in `frame`."""
    prob, labels = predict(model, loader, normalise)
    return evaluation_of(prob, labels, frame)


def evaluation_of(prob: np.ndarray, labels: np.ndarray, frame: pd.DataFrame) -> Evaluation:
    """Return the Evaluation of class probabilities `prob` (N x C) of the rows in `frame`, whatever
    model produced them: metrics with unweighted cross-entropy `loss`, confusion, predictions."""
    loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(prob).clamp_min(1e-12)), torch.from_numpy(labels)))
    metrics = {"loss": loss, **classification_metrics(labels, prob)}
    columns = ["rel_path", "patient_id", "label"] + (["magnification"] if "magnification" in frame else [])
    predictions = frame[columns].reset_index(drop=True)
    predictions = predictions.assign(**{f"prob_{c}": prob[:, c] for c in range(prob.shape[1])}, pred=prob.argmax(1))
    metrics.update(grouped_accuracies(predictions))
    return Evaluation(
        metrics=metrics, confusion=confusion(labels, prob.argmax(1), prob.shape[1]), predictions=predictions
    )


def mean_softmax(probabilities: list[np.ndarray]) -> np.ndarray:
    """Return the mean of fold models' class probabilities (each N x C), in float32: the models
    compute in float32, and folds read back from stored predictions average as the fresh ones did."""
    return np.mean(np.stack([p.astype(np.float32) for p in probabilities]), axis=0)


def fold_ensemble(predictions: list[pd.DataFrame]) -> Evaluation:
    """Return the evaluation of the mean softmax of fold models over the same test images."""
    first = predictions[0]
    for other in predictions[1:]:
        if not other.rel_path.equals(first.rel_path):
            raise ValueError("fold models were evaluated on different test images")
    prob_columns = [c for c in first.columns if c.startswith("prob_")]
    mean = mean_softmax([p[prob_columns].to_numpy() for p in predictions])
    labels = first.label.to_numpy()
    frame = first.drop(columns=prob_columns + ["pred"]).assign(
        **{c: mean[:, i] for i, c in enumerate(prob_columns)}, pred=mean.argmax(1)
    )
    metrics = {**classification_metrics(labels, mean), **grouped_accuracies(frame)}
    return Evaluation(metrics=metrics, confusion=confusion(labels, mean.argmax(1), mean.shape[1]), predictions=frame)


def map_galleries(
    model: nn.Module, dataset: ImageDataset | BagDataset, evaluation: Evaluation, normalise: Normaliser, k: int = 4
) -> dict[str, MapGallery]:
    """Return explanation maps of the k best and k worst predictions (by probability of the true class)."""
    frame = evaluation.predictions
    prob_true = frame[[f"prob_{c}" for c in range(evaluation.confusion.shape[0])]].to_numpy()[
        np.arange(len(frame)), frame.label.to_numpy()
    ]
    order = np.argsort(prob_true, kind="stable")
    galleries = {}
    for name, picked in (("best", order[::-1][:k]), ("worst", order[:k])):
        # An item's image is a tensor (its label an int).
        images = normalise(torch.stack([cast(torch.Tensor, dataset[int(i)]["image"]) for i in picked]))
        kind, maps = explanation_maps(model, images)
        captions = [
            f"{frame.rel_path[i].rsplit('/', 1)[-1]}\n"
            f"true {frame.label[i]}, pred {frame.pred[i]}, p(true) {prob_true[i]:.2f}"
            for i in picked
        ]
        galleries[name] = MapGallery(
            kind=kind,
            images=np.stack([dataset.raw(int(i)) for i in picked]),
            maps=maps[:, 0].float().cpu().numpy(),
            captions=captions,
        )
    return galleries
