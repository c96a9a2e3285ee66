"""One run = one model x one fold: fit with early stopping, evaluate the best epoch on the test set.

The same `fit` runs under `harness train` and inside a Ray trial; it reports through a callback
and knows nothing of Tune or MLflow.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.utils.data import DataLoader

import baselines
from baselines.losses import build_loss
from baselines.maps import explanation_maps
from harness.bn_recalibration import recalibrate_for_evaluation
from harness.config import TrainParams
from harness.data.bags import bag_grid
from harness.data.cache import open_patch_cache
from harness.data.dataset import BagDataset, ImageDataset
from harness.data.manifest import read_manifest
from harness.data.splits import CV, TEST, read_split
from harness.data.transforms import batch_normaliser, build_bag_transform, build_transform
from harness.localisation import localisation_scores
from harness.metrics import classification_metrics, confusion, grouped_accuracies
from harness.optim import build_optimizer, step_schedule

# The RunSpec fields every run logs as params beside its hyperparameters (the protocol options).
PROTOCOL_PARAMS = ("semantics", "bn_recalibration")


class RunSpec(BaseModel):
    """Everything one run needs, with absolute paths so it means the same in any working directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: str
    num_classes: int
    pretrained: Path | None = None
    params: TrainParams
    model_kwargs: dict[str, Any] = {}
    manifest_path: Path
    cache_path: Path
    mask_cache_path: Path | None = None
    split_path: Path
    fold: int
    max_epochs: int
    patience: int = 5
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    eval_batch_size: int = 512
    evaluate_test: bool = True
    semantics: Literal["source", "torch"] = "source"
    bn_recalibration: bool = False

    @property
    def epochs(self) -> int:
        """Return the epoch budget: the run's own epochs_max, capped by the search budget."""
        return min(self.params.epochs_max, self.max_epochs)

    @property
    def protocol_params(self) -> dict[str, str]:
        """Return the protocol options a run logs beside its hyperparameters."""
        return {name: str(getattr(self, name)).lower() for name in PROTOCOL_PARAMS}


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


class DivergedError(RuntimeError):
    """The training loss stopped being a finite number."""


@dataclass
class TrainState:
    """Everything needed to continue a run after its last finished epoch (saved in a checkpoint)."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedulers: list[dict[str, Any]]
    best_loss: float
    best_epoch: int
    best_val: dict[str, float]
    best_state: dict[str, torch.Tensor]
    best_evaluation: Evaluation
    history: list[EpochReport]
    rng: dict[str, Any]


@dataclass
class EpochReport:
    """What `fit` reports after each epoch; `test` and `best_val_evaluation` (the validation
    predictions of the best epoch) are set on the last one only. `snapshot` returns the TrainState
    to continue from this epoch (built only when called: it copies the model)."""

    epoch: int
    train_loss: float
    val: dict[str, float]
    best_epoch: int
    best_val: dict[str, float]
    done: bool
    param_counts: dict[str, int]
    test: Evaluation | None = None
    best_val_evaluation: Evaluation | None = None
    snapshot: Callable[[], TrainState] | None = field(default=None, repr=False, compare=False)


@dataclass
class FitResult:
    """The outcome of a run: per-epoch history, the best epoch, and its test evaluation."""

    history: list[EpochReport]
    best_epoch: int
    best_val: dict[str, float]
    val: Evaluation
    test: Evaluation | None
    param_counts: dict[str, int]
    seconds: float
    state_dict: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(device: str) -> str:
    """Return 'cuda' or 'cpu' for a configured device ('auto' picks CUDA when present)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Return CancerNet's weights n_max / n_c, counted on the training labels (BASELINES.md §1.5)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(counts.max() / np.maximum(counts, 1), dtype=torch.float32)


def _loader(dataset: ImageDataset | BagDataset, batch_size: int, *, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    # Dropping a last partial batch mirrors Keras' steps_per_epoch = n // batch and keeps
    # BatchNorm away from a batch of one.
    drop_last = shuffle and len(dataset) > batch_size
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator)


Normaliser = Callable[[torch.Tensor], torch.Tensor]
# Models whose own maps are scored against RoI masks (Grad-CAM of the others is not: §4.3's Table II).
MAP_OUTPUTS = {"roi", "attention"}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, normalise: Normaliser) -> tuple[np.ndarray, np.ndarray]:
    """Return (softmax probabilities N x C, labels N) of `model` over `loader`."""
    model.eval()
    probs, labels = [], []
    for batch in loader:
        logits = model(normalise(batch["image"]))["logits"]
        probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(probs), np.concatenate(labels)


def evaluate(model: nn.Module, loader: DataLoader, normalise: Normaliser, frame: pd.DataFrame) -> Evaluation:
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
        images = normalise(torch.stack([dataset[int(i)]["image"] for i in picked]))
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


def _rng_state(loader: DataLoader) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "loader": loader.generator.get_state(),
    }


def _restore_rng(state: dict[str, Any], loader: DataLoader) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    loader.generator.set_state(state["loader"])


def fit(
    spec: RunSpec, report: Callable[[EpochReport], None] | None = None, resume: TrainState | None = None
) -> FitResult:
    """Train `spec.baseline` on the fold's training patients, early-stop on validation loss,
    and evaluate the best epoch on the test patients; returns the FitResult.

    With `resume`, training continues after the epoch that state was saved at. A non-finite
    training loss raises DivergedError."""
    started = time.perf_counter()
    seed_everything(spec.seed)
    torch.set_num_threads(max(1, spec.threads))
    device = resolve_device(spec.device)
    manifest, _ = read_manifest(spec.manifest_path)
    split = read_split(spec.split_path)
    if not np.array_equal(split.assignments.rel_path.to_numpy(), manifest.rel_path.to_numpy()):
        raise ValueError(f"split {spec.split_path} was not made from manifest {spec.manifest_path}")
    images = open_patch_cache(spec.cache_path)
    mask_cache = open_patch_cache(spec.mask_cache_path) if spec.mask_cache_path else None
    labels = manifest.label.to_numpy()
    stored_hw = tuple(images.shape[1:3])
    entry = baselines.info(spec.baseline)
    grid = bag_grid(*images.shape[1:3]) if entry.input_kind == "bag" else None
    scores_maps = mask_cache is not None and grid is None and bool(MAP_OUTPUTS & set(entry.outputs))
    model_kwargs = dict(spec.model_kwargs)
    if grid is not None:
        # The attention map is drawn on the grid the data gives, whatever the model's default.
        model_kwargs.update(grid_rows=grid.rows, grid_cols=grid.cols)
    rows = {
        "train": split.rows(split=CV, exclude_fold=spec.fold),
        "val": split.rows(split=CV, fold=spec.fold),
        "test": split.rows(split=TEST),
    }
    p = spec.params
    # Optimiser, loss clipping and weighting, resize and augmentation as the source's Keras defined them.
    keras = baselines.uses_keras_semantics(spec.baseline, spec.semantics)

    def dataset(part: str) -> ImageDataset | BagDataset:
        train = part == "train"
        if grid is not None:
            return BagDataset(images, rows[part], labels, build_bag_transform(p, train=train, seed=spec.seed), grid)
        transform = build_transform(p, stored_hw=stored_hw, train=train, seed=spec.seed, keras=keras)
        return ImageDataset(images, rows[part], labels, transform, mask_cache if train else None)

    train_set = dataset("train")
    # Its own dataset, reseeded each epoch, so that training's augmentation and shuffling streams
    # stay as they are whether or not the run recalibrates BatchNorm.
    recalibration_set = dataset("train") if spec.bn_recalibration else None
    train_loader = _loader(train_set, p.batch_size, shuffle=True, seed=spec.seed)
    val_loader = _loader(dataset("val"), spec.eval_batch_size, shuffle=False, seed=spec.seed)
    model = baselines.create(
        spec.baseline,
        num_classes=spec.num_classes,
        pretrained=str(spec.pretrained) if spec.pretrained else None,
        semantics=spec.semantics,
        **model_kwargs,
    ).to(device)
    counts = baselines.param_counts(model)
    weights = class_weights(labels[rows["train"]], spec.num_classes) if p.class_weights == "inverse_max" else None
    criterion = build_loss(
        entry.loss,
        class_weights=weights.to(device) if weights is not None else None,
        lambda_roi=p.lambda_dice,
        roi_mode=p.roi_target,
        keras=keras,
    )
    normalise = batch_normaliser(p.normalisation, device)
    optimizer = build_optimizer(p, model, keras=keras)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, step_schedule(p, spec.epochs))
    epoch_scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, p.lr_step_epochs, p.lr_gamma) if p.lr_decay == "step" else None
    )

    schedulers = [s for s in (scheduler, epoch_scheduler) if s is not None]

    history: list[EpochReport] = []
    best: tuple[float, int, dict[str, float], dict[str, torch.Tensor], Evaluation] | None = None
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        for sched, state in zip(schedulers, resume.schedulers):
            sched.load_state_dict(state)
        best = (resume.best_loss, resume.best_epoch, resume.best_val, resume.best_state, resume.best_evaluation)
        history = list(resume.history)
        _restore_rng(resume.rng, train_loader)
        first_epoch = resume.epoch + 1

    def snapshot(epoch: int) -> Callable[[], TrainState]:
        def take() -> TrainState:
            assert best is not None
            return TrainState(
                epoch=epoch,
                model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                optimizer=copy.deepcopy(optimizer.state_dict()),
                schedulers=[s.state_dict() for s in schedulers],
                best_loss=best[0],
                best_epoch=best[1],
                best_val=best[2],
                best_state=best[3],
                best_evaluation=best[4],
                history=[dataclasses.replace(h, test=None, best_val_evaluation=None, snapshot=None) for h in history],
                rng=_rng_state(train_loader),
            )

        return take

    for epoch in range(first_epoch, spec.epochs + 1):
        # A seed per epoch makes the augmentations of epoch k the same whether or not the run
        # was resumed before it.
        train_set.transform.set_random_seed(spec.seed * 10_000 + epoch)
        model.train()
        total, seen = 0.0, 0
        for step, batch in enumerate(train_loader, 1):
            targets = batch["label"].to(device)
            masks = batch["mask"].to(device) if "mask" in batch else None
            loss = criterion(model(normalise(batch["image"])), targets, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DivergedError(
                    f"training loss became {value} at epoch {epoch}, step {step} ({spec.baseline}, "
                    f"{p.optimizer} lr {p.lr:g}, batch {p.batch_size})"
                )
            total += value * len(targets)
            seen += len(targets)
        if epoch_scheduler is not None:
            epoch_scheduler.step()
        if recalibration_set is not None:
            seed = spec.seed * 10_000 + epoch
            recalibration_set.transform.set_random_seed(seed)
            recalibrate_for_evaluation(
                model, _loader(recalibration_set, p.batch_size, shuffle=True, seed=seed), normalise
            )
        val = evaluate(model, val_loader, normalise, manifest.iloc[rows["val"]])
        if best is None or val.metrics["loss"] < best[0]:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best = (val.metrics["loss"], epoch, val.metrics, state, val)
        done = epoch == spec.epochs or epoch - best[1] >= spec.patience
        test = None
        if done:
            best_model = copy.deepcopy(model)
            best_model.load_state_dict(best[3])
        if done and scores_maps:
            # Scored on the validation fold, as 001's Table II; the masks follow the eval transform.
            masked = ImageDataset(images, rows["val"], labels, dataset("val").transform, mask_cache)
            best[4].metrics.update(
                localisation_scores(
                    best_model, _loader(masked, spec.eval_batch_size, shuffle=False, seed=spec.seed), normalise
                )
            )
        if done and spec.evaluate_test and len(rows["test"]):
            test_model = best_model
            test_set = dataset("test")
            test_loader = _loader(test_set, spec.eval_batch_size, shuffle=False, seed=spec.seed)
            test = evaluate(test_model, test_loader, normalise, manifest.iloc[rows["test"]])
            test.galleries = map_galleries(test_model, test_set, test, normalise)
        entry = EpochReport(
            epoch=epoch,
            train_loss=total / max(seen, 1),
            val=val.metrics,
            best_epoch=best[1],
            best_val=best[2],
            done=done,
            param_counts=counts,
            test=test,
            best_val_evaluation=best[4] if done else None,
            snapshot=snapshot(epoch),
        )
        history.append(entry)
        if report is not None:
            report(entry)
        if done:
            break
    assert best is not None
    return FitResult(
        history=history,
        best_epoch=best[1],
        best_val=best[2],
        val=best[4],
        test=history[-1].test,
        param_counts=counts,
        seconds=time.perf_counter() - started,
        state_dict=best[3],
    )
