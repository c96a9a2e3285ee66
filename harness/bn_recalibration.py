"""BatchNorm recalibration: the protocol option `training.bn_recalibration` (issue 13).

Two things leave a BatchNorm's running statistics unfit for evaluation (bench/recipes.py
--diagnose measures both). With few optimiser steps (or Keras' momentum 0.99) they have not
forgotten their initial variance of 1, far above that of the input of CancerNet's or idc_cnn's
first BatchNorm. And a BatchNorm that follows a Dropout (CancerNet's blocks end in one) averages the
statistics of dropped activations, whose variance is about 1.6 times that of the undropped ones
evaluation feeds it. Before each evaluation the option replaces every BatchNorm's running mean and variance
by the plain average of its batch statistics over a fixed number of training batches, the way
`torch.optim.swa_utils.update_bn` and PreciseBN do, with Dropout off: the statistics of the
activations evaluation will normalise. The published model (its layers, dropout and weights) is
left as it is; only the running statistics that evaluation normalises with change.
"""

from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

# Training batches averaged per recalibration: enough for a variance estimate of a few thousand
# images at batch 32, and about one epoch of forward passes on the IDC sample.
RECALIBRATION_BATCHES = 100


def batchnorms(model: nn.Module) -> dict[str, _BatchNorm]:
    """Return the model's BatchNorm layers that keep running statistics, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats}


def _statistics(m: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the batch count, running mean and running variance of a BatchNorm from `batchnorms`."""
    # track_running_stats registered all three.
    assert m.num_batches_tracked is not None and m.running_mean is not None and m.running_var is not None
    return m.num_batches_tracked, m.running_mean, m.running_var


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], *, dropout: bool) -> int:
    """Recompute every BatchNorm's running mean and (unbiased) variance as the average of its batch
    statistics over `batches` (already normalised model inputs), with the model in training mode and
    its Dropout layers active (`dropout=True`) or off; returns the number of batches used.

    A BatchNorm that does not update its statistics in training mode (a frozen layer under Keras
    semantics) keeps them. Weights, momenta, `num_batches_tracked`, each module's mode and every
    random stream are as before.
    """
    norms = list(batchnorms(model).values())
    if not norms:
        return 0
    saved = []
    for m in norms:
        tracked, mean, var = _statistics(m)
        saved.append((m.momentum, tracked.clone(), mean.clone(), var.clone()))
    modes = {module: module.training for module in model.modules()}
    model.train()
    for module in model.modules():
        if isinstance(module, _DropoutNd) and not dropout:
            module.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
    count = 0
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        # Dropout draws random numbers: forked, so that training continues with the same stream
        # whether or not the run recalibrates.
        with torch.random.fork_rng(devices=devices):
            for batch in batches:
                model(batch)
                count += 1
    finally:
        for m, (momentum, tracked, mean, var) in zip(norms, saved):
            running_tracked, running_mean, running_var = _statistics(m)
            if int(running_tracked) == 0:
                # A layer that never updated its statistics here (Keras runs a frozen BatchNorm in
                # inference mode) does not in training either: its statistics stay as they were.
                running_mean.copy_(mean)
                running_var.copy_(var)
            m.momentum = momentum
            running_tracked.copy_(tracked)
        for module, training in modes.items():
            module.training = training
    if count == 0:
        raise ValueError("BatchNorm recalibration needs at least one training batch")
    return count


def recalibrate_for_evaluation(
    model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], normalise: Callable[[torch.Tensor], torch.Tensor]
) -> int:
    """Recalibrate `model` as the protocol option does, on the first RECALIBRATION_BATCHES image
    batches of `loader` (training images, training augmentation) with Dropout off; returns the
    number of batches used.

    Dropout off because evaluation feeds every BatchNorm undropped activations. Recalibrated on
    dropped ones, CancerNet's recipe (source semantics, IDC sample, fold 0) still predicted IDC for
    98 % of the validation patches after epochs 1 and 2 (accuracy 0.41 and 0.42); recalibrated with
    Dropout off it reached 0.75 and 0.81, level with its training-mode predictions without Dropout (0.73, 0.79).
    """
    images = (normalise(batch["image"]) for batch in islice(loader, RECALIBRATION_BATCHES))
    return recalibrate_batchnorm(model, images, dropout=False)
