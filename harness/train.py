"""One run = one model x one fold: fit with early stopping, evaluate the best epoch on the test set.

The same `fit` runs under `harness train` and inside a Ray trial; it reports through a callback
and knows nothing of Tune or MLflow.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

import baselines
from baselines.losses import build_loss
from baselines.maps import draws_maps
from harness.bn_recalibration import recalibrate_for_evaluation
from harness.config import ComputeSpec
from harness.data.bags import BagGrid, bag_grid
from harness.data.batched import (
    BatchAugment,
    DeviceBatches,
    VectorBatches,
    batched_augmentation_supported,
    fits_on_device,
)
from harness.data.cache import is_patch_cache, open_patch_cache
from harness.data.dataset import BagDataset, ImageDataset, part_dataset
from harness.data.manifest import read_manifest
from harness.data.normalise import batch_normaliser
from harness.data.splits import CV, TEST, read_split
from harness.embeddings import embedding_recipe, ensure_embeddings, open_embeddings
from harness.epoch_loss import EpochLoss
from harness.errors import InputError
from harness.evaluation import Batches, Evaluation, Normaliser, evaluate, map_galleries
from harness.localisation import localisation_scores
from harness.optim import build_optimizer, step_schedule
from harness.precision import autocast, resolve_device
from harness.run_spec import RunSpec
from harness.served_model import ClassProbabilities, EmbeddingProbabilities, InputRecipe, ServedFold

# What a run's batches come from: per-image loading, patches on the device, or embeddings.
Loader = DataLoader | DeviceBatches | VectorBatches


class DivergedError(RuntimeError):
    """The training loss stopped being a finite number."""


class OutOfMemory(RuntimeError):
    """One allocation of a run did not fit in the memory it was given (the host's or a GPU's); the
    message says how much it asked for and what to lower."""


# torch's allocator errors: the CPU allocator's (an address-space limit, or the kernel refusing) and
# CUDA's caching allocator's (its size as torch formats it: "2.00 GiB"); and NumPy's (data pipeline).
_CPU_REQUEST = re.compile(r"DefaultCPUAllocator: .*?you tried to allocate (\d+) bytes")
_CUDA_REQUEST = re.compile(r"CUDA out of memory\.(?: Tried to allocate| .*?Requested size:) ([\d.]+ \w+)")
_NUMPY_REQUEST = re.compile(r"Unable to allocate ([\d.]+ \w+) for an array")
GPU_MEMORY, HOST_MEMORY = "GPU memory", "host memory"  # what an OutOfMemory says it could not get


def allocation_failure(error: BaseException | str) -> str | None:
    """Return what an allocator error of torch or NumPy asked for ("64.00 GiB of host memory"), or
    None when `error` (an exception, or its printed text) is no such error."""
    text = str(error)
    if cpu := _CPU_REQUEST.search(text):
        size = int(cpu.group(1))
        amount = f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.2f} MiB"
        return f"{amount} of {HOST_MEMORY}"
    if numpy := _NUMPY_REQUEST.search(text):
        return f"{numpy.group(1)} of {HOST_MEMORY}"
    if isinstance(error, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in text:
        cuda = _CUDA_REQUEST.search(text)
        return f"{cuda.group(1) if cuda else 'more'} of {GPU_MEMORY}"
    return None


@contextmanager
def _naming_allocation_failures(spec: RunSpec) -> Iterator[None]:
    """Turn an allocator error raised in the block into OutOfMemory naming the run's batch size and
    input size, the two settings that size its activations; yields nothing."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        asked = allocation_failure(exc)
        if asked is None:
            raise
        height, width = spec.params.input_hw
        raise OutOfMemory(
            f"{spec.baseline} at batch_size {spec.params.batch_size} and input_size {height}x{width} could "
            f"not allocate {asked}; lower batch_size or input_size"
        ) from exc


@dataclass
class BestEpoch:
    """The epoch with the lowest validation loss so far: its number, validation metrics and
    predictions, and a CPU copy of the model's weights at that epoch."""

    epoch: int
    evaluation: Evaluation
    state: dict[str, torch.Tensor] = field(repr=False)

    @property
    def loss(self) -> float:
        """Return the epoch's validation loss, the early-stopping criterion."""
        return self.evaluation.metrics["loss"]

    @property
    def val(self) -> dict[str, float]:
        """Return the epoch's validation metrics."""
        return self.evaluation.metrics


@dataclass
class TrainState:
    """Everything needed to continue a run after its last finished epoch (saved in a checkpoint)."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedulers: list[dict[str, Any]]
    best: BestEpoch
    history: list[EpochReport]
    rng: dict[str, Any]
    scaler: dict[str, Any] | None = None  # the fp16 gradient scaler's state


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


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Return CancerNet's weights n_max / n_c, counted on the training labels (BASELINES.md §1.5)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(counts.max() / np.maximum(counts, 1), dtype=torch.float32)


# The most worker processes `loader_workers: auto` gives one trial's per-image loader.
AUTO_WORKERS = 4


def loader_workers(compute: ComputeSpec, device: str, threads: int) -> int:
    """Return the DataLoader worker processes of a run: its setting, or for `auto` none on the
    CPU and on CUDA the run's threads up to AUTO_WORKERS."""
    if compute.loader_workers != "auto":
        return compute.loader_workers
    return min(AUTO_WORKERS, max(1, threads)) if torch.device(device).type == "cuda" else 0


def _seed_worker(worker_id: int) -> None:
    # Each worker gets a copy of the dataset's seeded augmentation, so without this every worker
    # would draw the same parameters; torch.initial_seed() differs per worker and follows the
    # loader's generator, so the stream stays reproducible for a given number of workers.
    worker = torch.utils.data.get_worker_info()
    transform = getattr(worker.dataset, "transform", None) if worker is not None else None
    if transform is not None:
        transform.set_random_seed(torch.initial_seed() % 2**32)


def _loader(
    dataset: ImageDataset | BagDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    workers: int = 0,
    pin: bool = False,
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    # Dropping a last partial batch mirrors Keras' steps_per_epoch = n // batch and keeps
    # BatchNorm away from a batch of one.
    drop_last = shuffle and len(dataset) > batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        generator=generator,
        num_workers=workers,
        worker_init_fn=_seed_worker if workers else None,
        pin_memory=pin,
    )


def _rng_state(loader: Loader) -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        # Dropout and augmentation on a GPU draw from its own stream, not the CPU's (a run that
        # never touched CUDA has drawn nothing there, and starts no CUDA context to say so).
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "loader": loader.generator.get_state(),
    }


def _restore_rng(state: dict[str, Any], loader: Loader) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []  # none in a checkpoint written on a CPU or before it was kept
    # A resume where the GPUs differ in number (or are absent) keeps that machine's own streams.
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    loader.generator.set_state(state["loader"])


@dataclass
class _Fold:
    """A fold opened for training: its manifest rows per part (train, val, test), the image and
    mask caches, and how each part's dataset is built for the run's recipe."""

    spec: RunSpec
    manifest: pd.DataFrame
    rows: dict[str, np.ndarray]
    images: np.ndarray
    masks: np.ndarray | None
    grid: BagGrid | None
    keras: bool
    workers: int
    pin: bool
    # The rows are an encoder's embeddings (N x D), not images: a probe's fold.
    embedded: bool = False

    @property
    def labels(self) -> np.ndarray:
        """Return the label of every manifest row."""
        return self.manifest.label.to_numpy()

    @property
    def scores_maps(self) -> bool:
        """Return True when the model's own maps are scored against the fold's RoI masks."""
        return self.masks is not None and self.grid is None and baselines.info(self.spec.baseline).has_own_maps

    def dataset(self, part: str, *, with_masks: bool = False) -> ImageDataset | BagDataset:
        """Return the dataset of `part` with its transform (augmented for train); masks ride along
        with training images, and with others when asked."""
        train = part == "train"
        masks = self.masks if train or with_masks else None
        return part_dataset(
            self.images,
            self.rows[part],
            self.labels,
            self.spec.params,
            grid=self.grid,
            train=train,
            seed=self.spec.seed,
            keras=self.keras,
            masks=masks,
        )

    def loader(self, dataset: ImageDataset | BagDataset, batch_size: int, *, shuffle: bool, seed: int) -> DataLoader:
        """Return a loader over `dataset` with the run's worker processes and memory pinning."""
        return _loader(dataset, batch_size, shuffle=shuffle, seed=seed, workers=self.workers, pin=self.pin)

    def evaluation_loader(self, dataset: ImageDataset | BagDataset) -> DataLoader:
        """Return an unshuffled loader over `dataset` in evaluation batches."""
        return self.loader(dataset, self.spec.training.eval_batch_size, shuffle=False, seed=self.spec.seed)

    def vectors(self, part: str, device: str, *, train: bool = False) -> VectorBatches:
        """Return the embeddings of `part` on `device`: shuffled training batches, or in order in
        evaluation batches."""
        rows, spec = self.rows[part], self.spec
        size = spec.params.batch_size if train else spec.training.eval_batch_size
        return VectorBatches(
            self.images[rows], self.labels[rows], batch_size=size, device=device, seed=spec.seed, shuffle=train
        )


def _open_fold(spec: RunSpec) -> _Fold:
    """Return the fold of `spec`, after checking that its split was made from its manifest."""
    manifest, _ = read_manifest(spec.data.manifest_path)
    split = read_split(spec.data.split_path)
    if not np.array_equal(split.assignments.rel_path.to_numpy(), manifest.rel_path.to_numpy()):
        raise ValueError(f"split {spec.data.split_path} was not made from manifest {spec.data.manifest_path}")
    kind = baselines.info(spec.baseline).input_kind
    device = resolve_device(spec.training.device)
    images = _embeddings(spec, device) if kind == "embedding" else open_patch_cache(spec.data.cache_path)
    bags = kind == "bag"
    return _Fold(
        spec=spec,
        manifest=manifest,
        rows={
            "train": split.rows(split=CV, exclude_fold=spec.fold),
            "val": split.rows(split=CV, fold=spec.fold),
            "test": split.rows(split=TEST),
        },
        images=images,
        masks=open_patch_cache(spec.data.mask_cache_path) if spec.data.mask_cache_path else None,
        grid=bag_grid(*images.shape[1:3]) if bags else None,
        # Optimiser, loss clipping and weighting, resize and augmentation as the source's Keras defined them.
        keras=spec.keras,
        workers=loader_workers(spec.training.compute, device, spec.threads),
        pin=torch.device(device).type == "cuda",
        embedded=kind == "embedding",
    )


def _embeddings(spec: RunSpec, device: str) -> np.ndarray:
    """Return the run's encoder embeddings of every manifest row, memory-mapped: computed once per
    encoder, weights file and data (a sweep computes them before its trials start), reused after."""
    encoder = spec.encoder
    assert encoder is not None, f"{spec.baseline} reads embeddings but names no encoder"
    recipe = embedding_recipe(spec.data, encoder)
    # Building an encoder draws random numbers before its weights are read: on a stream of its
    # own, so the head starts from the same weights whether this run computed the cache or found it.
    with torch.random.fork_rng(devices=[]):
        return open_embeddings(ensure_embeddings(spec.data, recipe, device=device, show_progress=False))


@dataclass
class _Optimisation:
    """The model and what trains it: loss, optimiser, per-step and per-epoch schedules, and the
    on-device batch normalisation."""

    model: nn.Module
    criterion: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer
    step_scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch_scheduler: torch.optim.lr_scheduler.LRScheduler | None
    normalise: Normaliser
    device: str
    autocast: Callable[[], ContextManager[Any]]
    scaler: torch.amp.GradScaler | None

    @property
    def schedulers(self) -> list[torch.optim.lr_scheduler.LRScheduler]:
        """Return the schedulers whose state a checkpoint keeps, in a fixed order."""
        return [s for s in (self.step_scheduler, self.epoch_scheduler) if s is not None]


def _create_model(spec: RunSpec, fold: _Fold, *, pretrained: bool) -> nn.Module:
    """Return the model of `spec` for `fold`, from its pretrained weights when asked."""
    model_kwargs = dict(spec.model_kwargs)
    if fold.grid is not None:
        # The attention map is drawn on the grid the data gives, whatever the model's default.
        model_kwargs.update(grid_rows=fold.grid.rows, grid_cols=fold.grid.cols)
    return baselines.create(
        spec.baseline,
        num_classes=spec.num_classes,
        pretrained=str(spec.pretrained) if spec.pretrained and pretrained else None,
        semantics=spec.training.semantics,
        **model_kwargs,
    )


def _build_optimisation(spec: RunSpec, fold: _Fold, device: str) -> _Optimisation:
    """Return the model of `spec` on `device` with its recipe's loss, optimiser and schedules."""
    p, entry, compute = spec.params, baselines.info(spec.baseline), spec.training.compute
    model = _create_model(spec, fold, pretrained=True).to(device)
    if compute.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weights = (
        class_weights(fold.labels[fold.rows["train"]], spec.num_classes) if p.class_weights == "inverse_max" else None
    )
    criterion = build_loss(
        entry.loss,
        class_weights=weights.to(device) if weights is not None else None,
        lambda_roi=p.lambda_dice,
        roi_mode=p.roi_target,
        keras=fold.keras,
    )
    if fold.embedded:
        _memorise(model, fold, device)
    # A kNN probe has no weights: an optimiser over one empty tensor keeps one loop (schedules,
    # checkpoints) for every run, and _train_epoch never steps it.
    idle = [nn.Parameter(torch.zeros(0))]
    optimizer = build_optimizer(p, model, keras=fold.keras) if _trains(model) else torch.optim.SGD(idle, lr=p.lr)
    return _Optimisation(
        model=model,
        criterion=criterion,
        optimizer=optimizer,
        step_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, step_schedule(p, spec.epochs)),
        epoch_scheduler=(
            torch.optim.lr_scheduler.StepLR(optimizer, p.lr_step_epochs, p.lr_gamma) if p.lr_decay == "step" else None
        ),
        # Embeddings are the encoder's output, already normalised as its input was.
        normalise=_identity
        if fold.embedded
        else batch_normaliser(p.normalisation, device, channels_last=compute.channels_last),
        device=device,
        autocast=autocast(compute.precision, device),
        scaler=torch.amp.GradScaler(torch.device(device).type) if compute.precision == "fp16" else None,
    )


def _identity(batch: torch.Tensor) -> torch.Tensor:
    return batch


def _memorise(model: nn.Module, fold: _Fold, device: str) -> None:
    """Give a model that learns by memory (a kNN probe) the training fold's embeddings."""
    memorise = getattr(model, "memorise", None)
    if memorise is not None:
        train = fold.rows["train"]
        features = torch.from_numpy(np.asarray(fold.images[train], dtype=np.float32)).to(device)
        memorise(features, torch.from_numpy(fold.labels[train]).to(device))


def _trains(model: nn.Module) -> bool:
    """Return True when `model` has weights to train (a kNN probe has none)."""
    return any(p.requires_grad for p in model.parameters())


def _train_epoch(spec: RunSpec, opt: _Optimisation, loader: Loader, epoch: int) -> float:
    """Run one epoch of training; returns its mean training loss (NaN for a model with nothing to
    train: a kNN probe's fit is its memory, and its loss on rows it holds would say nothing).
    Raises DivergedError on a non-finite loss."""
    if not _trains(opt.model):
        return float("nan")
    opt.model.train()
    losses = EpochLoss()
    for step, batch in enumerate(loader, 1):
        # Non-blocking: a blocking copy to the GPU would wait for every step queued before it.
        targets = batch["label"].to(opt.device, non_blocking=True)
        masks = batch["mask"].to(opt.device, non_blocking=True) if "mask" in batch else None
        with opt.autocast():
            loss = opt.criterion(opt.model(opt.normalise(batch["image"])), targets, masks)
        opt.optimizer.zero_grad(set_to_none=True)
        if opt.scaler is None:
            loss.backward()
            opt.optimizer.step()
        else:
            opt.scaler.scale(loss).backward()
            opt.scaler.step(opt.optimizer)
            opt.scaler.update()
        opt.step_scheduler.step()
        _check_finite(spec, epoch, losses.add(step, loss, len(targets)))
    _check_finite(spec, epoch, losses.read())
    if opt.epoch_scheduler is not None:
        opt.epoch_scheduler.step()
    return losses.mean


def _check_finite(spec: RunSpec, epoch: int, diverged: tuple[int, float] | None) -> None:
    """Raise DivergedError naming the step and value of a non-finite loss, when there is one."""
    if diverged is not None:
        step, value = diverged
        p = spec.params
        raise DivergedError(
            f"training loss became {value} at epoch {epoch}, step {step} ({spec.baseline}, "
            f"{p.optimizer} lr {p.lr:g}, batch {p.batch_size})"
        )


def _recalibration_batches(
    spec: RunSpec, fold: _Fold, train_loader: DataLoader | DeviceBatches
) -> Callable[[int], Batches] | None:
    """Return seed -> the training batches BatchNorm recalibrates on, drawn from streams of their
    own, so training's stay as they are whether or not the run recalibrates; None when it does not.
    A batched run draws them from its patches on the device."""
    if not spec.training.bn_recalibration:
        return None
    if isinstance(train_loader, DeviceBatches):
        return train_loader.drawn_with
    dataset = fold.dataset("train")

    def per_image(seed: int) -> DataLoader:
        dataset.transform.set_random_seed(seed)
        return _loader(dataset, spec.params.batch_size, shuffle=True, seed=seed)

    return per_image


def _epoch_seed(spec: RunSpec, epoch: int) -> int:
    """Return the seed of epoch `epoch`'s random draws, the same whether or not the run was resumed
    before it."""
    return spec.seed * 10_000 + epoch


def _recalibrate(spec: RunSpec, opt: _Optimisation, batches: Callable[[int], Batches], epoch: int) -> None:
    """Recompute BatchNorm statistics on training batches drawn with this epoch's own seed."""
    recalibrate_for_evaluation(opt.model, batches(_epoch_seed(spec, epoch)), opt.normalise)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _finish(fold: _Fold, opt: _Optimisation, best: BestEpoch) -> Evaluation | None:
    """Score the best epoch's maps on the validation fold (models with maps of their own, given
    masks) and evaluate it on the test set; returns the test evaluation, None without one."""
    spec = fold.spec
    best_model = copy.deepcopy(opt.model)
    best_model.load_state_dict(best.state)
    if fold.scores_maps:
        # Scored on the validation fold, as 001's Table II; the masks follow the eval transform.
        masked = fold.evaluation_loader(fold.dataset("val", with_masks=True))
        best.evaluation.metrics.update(localisation_scores(best_model, masked, opt.normalise))
    if not spec.evaluate_test or not len(fold.rows["test"]):
        return None
    if fold.embedded:
        # A probe's inputs are vectors: there is no image to draw an explanation map on.
        test_rows = fold.manifest.iloc[fold.rows["test"]]
        return evaluate(best_model, fold.vectors("test", opt.device), opt.normalise, test_rows)
    test_set = fold.dataset("test")
    with opt.autocast():
        test = evaluate(
            best_model, fold.evaluation_loader(test_set), opt.normalise, fold.manifest.iloc[fold.rows["test"]]
        )
    if draws_maps(best_model, baselines.info(spec.baseline).has_own_maps):
        test.galleries = map_galleries(best_model, test_set, test, opt.normalise)
    return test


@dataclass
class _Run:
    """A fit in progress: its fold, datasets and loaders, optimisation, parameter counts, and the
    best epoch and reports so far."""

    fold: _Fold
    # What draws the training augmentation (an albumentations pipeline, or a BatchAugment):
    # reseeded each epoch.
    augmentation: Any
    # Seed -> BatchNorm recalibration's training batches (None: the run does not recalibrate).
    recalibration: Callable[[int], Batches] | None
    train_loader: Loader
    val_loader: Loader
    opt: _Optimisation
    counts: dict[str, int]
    best: BestEpoch | None = None
    history: list[EpochReport] = field(default_factory=list)

    @property
    def kept(self) -> BestEpoch:
        """Return the best epoch so far; there is one once an epoch has run."""
        assert self.best is not None, "no epoch has run yet"
        return self.best

    def result(self, seconds: float) -> FitResult:
        """Return the FitResult of the finished run."""
        best = self.kept
        return FitResult(
            history=self.history,
            best_epoch=best.epoch,
            best_val=best.val,
            val=best.evaluation,
            test=self.history[-1].test,
            param_counts=self.counts,
            seconds=seconds,
            state_dict=best.state,
        )


def _patch_bytes(fold: _Fold, *parts: str) -> int:
    return sum(len(fold.rows[part]) for part in parts) * int(np.prod(fold.images.shape[1:]))


def _batched(spec: RunSpec, fold: _Fold, device: str) -> bool:
    """Return True when the run trains from device-resident batches (training.compute.loader)."""
    compute, p = spec.training.compute, spec.params
    if compute.loader == "per_image":
        return False
    stored_hw = tuple(fold.images.shape[1:3])
    supported = fold.masks is None and fold.grid is None and batched_augmentation_supported(p, stored_hw, fold.keras)
    if compute.loader == "batched" and not supported:
        raise InputError(
            f"training.compute.loader batched: {spec.baseline}'s training (augment {p.augment}, input "
            f"{p.input_hw} from {stored_hw}, masks or bags) has no batched form; use auto or per_image"
        )
    if compute.loader == "batched":
        return True
    return (
        torch.device(device).type == "cuda"
        and supported
        and fits_on_device(_patch_bytes(fold, "train"), device, compute.device_patch_share)
    )


def _device_batches(fold: _Fold, part: str, augment: BatchAugment, device: str, **options: Any) -> DeviceBatches:
    """Return the fold's `part` on `device`, in batches through `augment` (DeviceBatches' options)."""
    rows = fold.rows[part]
    return DeviceBatches(np.asarray(fold.images[rows]), fold.labels[rows], augment, device=device, **options)


def _train_batches(spec: RunSpec, fold: _Fold, resident: str | None) -> tuple[DataLoader | DeviceBatches, Any]:
    """Return the training batches and the augmentation reseeded each epoch: batches augmented a
    batch at a time on the `resident` device, or (None) a DataLoader over the per-image dataset."""
    if resident is None:
        train_set = fold.dataset("train")
        return fold.loader(train_set, spec.params.batch_size, shuffle=True, seed=spec.seed), train_set.transform
    augment = BatchAugment(spec.params.augment, spec.params.input_hw, keras=fold.keras, seed=spec.seed)
    return _device_batches(fold, "train", augment, resident, batch_size=spec.params.batch_size, seed=spec.seed), augment


def _val_batches(spec: RunSpec, fold: _Fold, resident: str | None) -> DataLoader | DeviceBatches:
    """Return the validation batches, in order: beside the training patches on the `resident`
    device when both fit its share of memory, resized there as the evaluation transform resizes;
    else a DataLoader."""
    both = _patch_bytes(fold, "train", "val")
    if resident is None or not fits_on_device(both, resident, spec.training.compute.device_patch_share):
        return fold.evaluation_loader(fold.dataset("val"))
    resize = BatchAugment("none", spec.params.input_hw, keras=fold.keras)
    return _device_batches(fold, "val", resize, resident, batch_size=spec.training.eval_batch_size, shuffle=False)


def _open_run(spec: RunSpec, resume: TrainState | None) -> _Run:
    """Return the run of `spec`, continued from `resume` when given."""
    fold = _open_fold(spec)
    device = resolve_device(spec.training.device)
    if fold.embedded:
        train_loader: Loader = fold.vectors("train", device, train=True)
        augmentation, recalibration = train_loader, None
        val_loader: Loader = fold.vectors("val", device)
    else:
        # The device the patches live on when the run takes the batched path, else None.
        resident = device if _batched(spec, fold, device) else None
        train_loader, augmentation = _train_batches(spec, fold, resident)
        recalibration = _recalibration_batches(spec, fold, train_loader)
        val_loader = _val_batches(spec, fold, resident)
    # The datasets come first: building the model draws its initial weights from the seeded stream.
    opt = _build_optimisation(spec, fold, device)
    counts = baselines.param_counts(opt.model)
    run = _Run(fold, augmentation, recalibration, train_loader, val_loader, opt, counts)
    if resume is not None:
        _resume(resume, run)
    return run


def _resume(state: TrainState, run: _Run) -> None:
    """Load `state` into the run's optimisation, loader stream, best epoch and history."""
    run.opt.model.load_state_dict(state.model)
    run.opt.optimizer.load_state_dict(state.optimizer)
    for scheduler, saved in zip(run.opt.schedulers, state.schedulers):
        scheduler.load_state_dict(saved)
    _restore_rng(state.rng, run.train_loader)
    if run.opt.scaler is not None and state.scaler is not None:
        run.opt.scaler.load_state_dict(state.scaler)
    best = state.best if state.best.state else dataclasses.replace(state.best, state=_weights(run.opt.model))
    run.best, run.history = best, list(state.history)


def _snapshot(epoch: int, run: _Run) -> Callable[[], TrainState]:
    """Return a function that builds the TrainState to continue after `epoch` (called only when
    a checkpoint is wanted: it copies the model)."""
    best, opt = run.kept, run.opt

    def take() -> TrainState:
        # The best epoch's weights are the model's when this epoch is the best: kept once, as the
        # model's, and the best epoch's state left empty (_resume fills it back).
        current = best.epoch == epoch
        return TrainState(
            epoch=epoch,
            model=best.state if current else _weights(opt.model),
            optimizer=copy.deepcopy(opt.optimizer.state_dict()),
            schedulers=[s.state_dict() for s in opt.schedulers],
            best=dataclasses.replace(best, state={}) if current else best,
            history=[dataclasses.replace(h, test=None, best_val_evaluation=None, snapshot=None) for h in run.history],
            rng=_rng_state(run.train_loader),
            scaler=opt.scaler.state_dict() if opt.scaler is not None else None,
        )

    return take


def _run_epoch(run: _Run, epoch: int) -> EpochReport:
    """Train one epoch, validate, keep the best epoch, and finish the run when it is done; returns
    the epoch's report."""
    spec, opt = run.fold.spec, run.opt
    run.augmentation.set_random_seed(_epoch_seed(spec, epoch))
    train_loss = _train_epoch(spec, opt, run.train_loader, epoch)
    if run.recalibration is not None:
        _recalibrate(spec, opt, run.recalibration, epoch)
    with opt.autocast():
        val = evaluate(opt.model, run.val_loader, opt.normalise, run.fold.manifest.iloc[run.fold.rows["val"]])
    if run.best is None or val.metrics["loss"] < run.best.loss:
        run.best = BestEpoch(epoch, val, _weights(opt.model))
    done = epoch == spec.epochs or epoch - run.best.epoch >= spec.training.patience
    return EpochReport(
        epoch=epoch,
        train_loss=train_loss,
        val=val.metrics,
        best_epoch=run.best.epoch,
        best_val=run.best.val,
        done=done,
        param_counts=run.counts,
        test=_finish(run.fold, opt, run.best) if done else None,
        best_val_evaluation=run.best.evaluation if done else None,
        snapshot=_snapshot(epoch, run),
    )


def fit(
    spec: RunSpec, report: Callable[[EpochReport], None] | None = None, resume: TrainState | None = None
) -> FitResult:
    """Train `spec.baseline` on the fold's training patients, early-stop on validation loss,
    and evaluate the best epoch on the test patients; returns the FitResult.

    With `resume`, training continues after the epoch that state was saved at. A non-finite
    training loss raises DivergedError; an allocation that does not fit, OutOfMemory."""
    started = time.perf_counter()
    seed_everything(spec.seed)
    torch.set_num_threads(max(1, spec.threads))
    torch.backends.cudnn.benchmark = spec.training.compute.cudnn_benchmark
    with _naming_allocation_failures(spec):
        run = _open_run(spec, resume)
        for epoch in range((resume.epoch if resume else 0) + 1, spec.epochs + 1):
            entry = _run_epoch(run, epoch)
            run.history.append(entry)
            if report is not None:
                report(entry)
            if entry.done:
                break
        return run.result(time.perf_counter() - started)


def served_fold(spec: RunSpec, result: FitResult, examples: int = 2) -> ServedFold:
    """Return the fit's best model as MLflow serves it (on the CPU, in eval mode), how stored
    images become its inputs, and the first `examples` stored test images with their inputs."""
    fold = _open_fold(spec)
    model = _create_model(spec, fold, pretrained=False)
    model.load_state_dict(result.state_dict)
    test = fold.rows["test"][:examples]
    stored = np.asarray(open_patch_cache(spec.data.cache_path)[test])
    recipe = InputRecipe(
        params=spec.params,
        stored_hw=tuple(stored.shape[1:3]),
        bags=fold.grid is not None,
        keras=fold.keras,
        batch_size=spec.training.eval_batch_size,
        threads=max(1, spec.threads),
        pads_edges=is_patch_cache(spec.data.cache_path),
        encoder=spec.encoder if fold.embedded else None,
    )
    if fold.embedded:
        head = EmbeddingProbabilities(model).eval()
        return ServedFold(head, recipe, stored, np.asarray(fold.images[test], dtype=np.float32))
    module = ClassProbabilities(model, spec.params.normalisation, spec.training.compute).eval()
    return ServedFold(module, recipe, stored, recipe.model_inputs(stored))
