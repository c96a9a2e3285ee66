"""Optimisers and learning-rate schedules of a run, as PyTorch or as Keras defines them.

Keras' optimisers are not PyTorch's under the same name (BASELINES.md §0.5): Adagrad starts its
accumulator at 0.1 and adds epsilon 1e-7 inside the square root; Adam and Adamax add epsilon 1e-7
to the uncorrected denominator; SGD keeps a velocity in lr units (v = momentum·v − lr·g), which
differs from PyTorch's buffer of gradients as soon as the lr changes, as under time-based decay.
The rules are Keras 3's `update_step` (`keras/src/optimizers/*.py`), computed in the order of its
torch backend (`keras/src/backend/torch/optimizers/`), the same arithmetic with foreach kernels.

`weight_decay` means the same in both semantics: L2 coupled into the gradient (g + wd·p), the
harness' reading of the seeds' L2 regularisers; for `adamw` it is decoupled, as both Keras'
and PyTorch's AdamW define it (p ← p − lr·wd·p before the update).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import ParamsT

from baselines import KERAS_EPSILON

if TYPE_CHECKING:  # torch only at run time: bench/gpu.py builds the Keras optimisers on a bare GPU machine
    from harness.config import TrainParams


def _f32(value: float) -> float:
    """`value` rounded to float32: Keras computes its scalars in the variable's dtype."""
    return float(np.float32(value))


class _KerasOptimizer(torch.optim.Optimizer):
    """Shared step loop over each parameter group: L2 or decoupled decay, then the subclass'
    `_update` on the lists of parameters, gradients and states (foreach arithmetic, in the order
    of Keras 3's torch backend, `keras/src/backend/torch/optimizers/`)."""

    def __init__(self, params: ParamsT, defaults: dict) -> None:
        # `iterations` counts the group's updates, as Keras' optimizer.iterations (bias corrections).
        super().__init__(params, {"weight_decay": 0.0, "decoupled": False, "iterations": 0, **defaults})

    # torch's overloads promise a float from the closure; ours returns the closure's loss tensor, as
    # torch's own optimisers do.
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """Apply one update to every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"] and group["decoupled"]:
                torch._foreach_mul_(params, float(1 - np.float32(group["weight_decay"]) * np.float32(group["lr"])))
            elif group["weight_decay"]:
                grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
            group["iterations"] += 1
            self._update(params, grads, [self.state[p] for p in params], group)
        return loss

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], group: dict) -> None:
        raise NotImplementedError

    @staticmethod
    def _slots(states: list[dict], params: list[torch.Tensor], name: str, fill: float = 0.0) -> list[torch.Tensor]:
        """Return each parameter's optimiser variable `name`, created at `fill` on first use."""
        for state, p in zip(states, params):
            if name not in state:
                state[name] = torch.full_like(p, fill, memory_format=torch.preserve_format)
        return [state[name] for state in states]


class KerasAdagrad(_KerasOptimizer):
    """Keras Adagrad: acc ← acc + g²; p ← p − lr·g / √(acc + ε), acc starting at 0.1."""

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        *,
        initial_accumulator_value: float = 0.1,
        eps: float = KERAS_EPSILON,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            params,
            {
                "lr": lr,
                "initial_accumulator_value": initial_accumulator_value,
                "eps": eps,
                "weight_decay": weight_decay,
            },
        )

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], group: dict) -> None:
        accumulators = self._slots(states, params, "accumulator", group["initial_accumulator_value"])
        torch._foreach_add_(accumulators, torch._foreach_mul(grads, grads))
        steps = torch._foreach_div(
            torch._foreach_mul(grads, _f32(group["lr"])),
            torch._foreach_sqrt(torch._foreach_add(accumulators, group["eps"])),
        )
        torch._foreach_add_(params, steps, alpha=-1)


class KerasAdam(_KerasOptimizer):
    """Keras Adam (AdamW when `decoupled`): p ← p − lr·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + ε)."""

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = KERAS_EPSILON,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "decoupled": decoupled}
        )

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], group: dict) -> None:
        (b1, b2), t = group["betas"], group["iterations"]
        m, v = self._slots(states, params, "m"), self._slots(states, params, "v")
        alpha = _f32(np.float32(group["lr"]) * np.sqrt(1 - np.float32(b2) ** t) / (1 - np.float32(b1) ** t))
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_add_(v, torch._foreach_mul(grads, grads), alpha=1 - b2)
        steps = torch._foreach_div(
            torch._foreach_mul(m, alpha), torch._foreach_add(torch._foreach_sqrt(v), group["eps"])
        )
        torch._foreach_add_(params, steps, alpha=-1)


class KerasAdamax(_KerasOptimizer):
    """Keras Adamax: u ← max(β2·u, |g|); p ← p − lr·m / ((u + ε)·(1−β1ᵗ))."""

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = KERAS_EPSILON,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], group: dict) -> None:
        (b1, b2), t = group["betas"], group["iterations"]
        m, u = self._slots(states, params, "m"), self._slots(states, params, "u")
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=1 - b1)
        torch._foreach_mul_(u, b2)
        torch._foreach_maximum_(u, torch._foreach_abs(grads))
        steps = torch._foreach_div(
            torch._foreach_mul(m, _f32(group["lr"])),
            torch._foreach_mul(torch._foreach_add(u, group["eps"]), _f32(1 - np.float32(b1) ** t)),
        )
        torch._foreach_add_(params, steps, alpha=-1)


class KerasSGD(_KerasOptimizer):
    """Keras SGD: with momentum v ← momentum·v − lr·g, p ← p + v; without, p ← p − lr·g."""

    def __init__(self, params: ParamsT, lr: float, *, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _update(self, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict], group: dict) -> None:
        lr = _f32(group["lr"])
        if not group["momentum"]:
            torch._foreach_add_(params, grads, alpha=-lr)
            return
        velocities = self._slots(states, params, "velocity")
        torch._foreach_mul_(velocities, group["momentum"])
        torch._foreach_add_(velocities, grads, alpha=-lr)
        torch._foreach_add_(params, velocities)


def _trainable(model: nn.Module, lr: float) -> ParamsT:
    """Return the model's own parameter groups when it defines them (each with its lr: layer-wise
    decay in baselines/probes.py), its trainable parameters otherwise."""
    groups = getattr(model, "param_groups", None)
    if callable(groups):
        return list(groups(lr))
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(params: TrainParams, model: nn.Module, *, keras: bool) -> torch.optim.Optimizer:
    """Return the run's optimiser over the model's trainable parameters (in the model's
    `param_groups(lr)` when it has them; the run's weight decay in every group): Keras' definition
    when `keras`, PyTorch's defaults otherwise."""
    lr, wd, name = params.lr, params.weight_decay, params.optimizer
    trainable = _trainable(model, lr)
    if keras:
        if name == "sgd":
            return KerasSGD(trainable, lr, momentum=params.momentum, weight_decay=wd)
        if name == "adagrad":
            return KerasAdagrad(trainable, lr, weight_decay=wd)
        if name == "adamax":
            return KerasAdamax(trainable, lr, weight_decay=wd)
        return KerasAdam(trainable, lr, weight_decay=wd, decoupled=name == "adamw")
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=params.momentum, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(trainable, lr=lr, weight_decay=wd)
    if name == "adamax":
        return torch.optim.Adamax(trainable, lr=lr, weight_decay=wd)
    optimizer = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return optimizer(trainable, lr=lr, weight_decay=wd)


def step_schedule(params: TrainParams, epochs: int) -> Callable[[int], float]:
    """Return the lr multiplier as a function of the number of optimiser steps taken so far."""
    if params.lr_decay == "keras_time_based":
        # Keras' legacy `decay = lr / epochs`, applied per batch update: lr_t = lr0 / (1 + decay * t),
        # t the updates before this one (Keras 3: InverseTimeDecay(lr0, decay_steps=1, decay_rate=decay)).
        decay = params.lr / epochs
        return lambda step: 1.0 / (1.0 + decay * step)
    return lambda step: 1.0
