"""Optimisers and learning-rate schedules of a run, as PyTorch or as Keras defines them.

Keras' optimisers are not PyTorch's under the same name (BASELINES.md §0.5): Adagrad starts its
accumulator at 0.1 and adds epsilon 1e-7 inside the square root; Adam and Adamax add epsilon 1e-7
to the uncorrected denominator; SGD keeps a velocity in lr units (v = momentum·v − lr·g), which
differs from PyTorch's buffer of gradients as soon as the lr changes, as under time-based decay.
The update rules below follow Keras 3's `keras/src/optimizers/*.py` `update_step` line by line.

`weight_decay` means the same in both semantics: L2 coupled into the gradient (g + wd·p), the
harness' reading of the seeds' L2 regularisers; for `adamw` it is decoupled, as both Keras'
and PyTorch's AdamW define it (p ← p − lr·wd·p before the update).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from harness.config import TrainParams

KERAS_EPSILON = 1e-7


def _f32(value: float | torch.Tensor) -> torch.Tensor:
    """A float32 scalar: Keras computes its bias corrections in the variable's dtype."""
    return torch.as_tensor(value, dtype=torch.float32)


class _KerasOptimizer(torch.optim.Optimizer):
    """Shared step loop: L2 or decoupled decay, then the subclass' `_update` per parameter."""

    def __init__(self, params: Iterable[nn.Parameter], defaults: dict) -> None:
        super().__init__(params, {"weight_decay": 0.0, "decoupled": False, **defaults})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Apply one update to every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if wd and group["decoupled"]:
                    p.sub_(p * _f32(wd) * _f32(lr))
                elif wd:
                    grad = grad.add(p, alpha=wd)
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                self._update(p, grad, state, group)
        return loss

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class KerasAdagrad(_KerasOptimizer):
    """Keras Adagrad: acc ← acc + g²; p ← p − lr·g / √(acc + ε), acc starting at 0.1."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, *, initial_accumulator_value: float = 0.1,
                 eps: float = KERAS_EPSILON, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "initial_accumulator_value": initial_accumulator_value, "eps": eps,
                                  "weight_decay": weight_decay})

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        if "accumulator" not in state:
            state["accumulator"] = torch.full_like(p, group["initial_accumulator_value"])
        acc = state["accumulator"]
        acc.add_(grad.square())
        p.sub_(group["lr"] * grad / (acc + group["eps"]).sqrt())


class KerasAdam(_KerasOptimizer):
    """Keras Adam (AdamW when `decoupled`): p ← p − lr·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + ε)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = KERAS_EPSILON, weight_decay: float = 0.0, decoupled: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "decoupled": decoupled})

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        if "m" not in state:
            state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
        (b1, b2), t, m, v = group["betas"], state["step"], state["m"], state["v"]
        alpha = group["lr"] * _f32(1 - _f32(b2) ** t).sqrt() / (1 - _f32(b1) ** t)
        m.add_((grad - m) * (1 - b1))
        v.add_((grad.square() - v) * (1 - b2))
        p.sub_(m * alpha / (v.sqrt() + group["eps"]))


class KerasAdamax(_KerasOptimizer):
    """Keras Adamax: u ← max(β2·u, |g|); p ← p − lr·m / ((1−β1ᵗ)·(u + ε))."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = KERAS_EPSILON, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        if "m" not in state:
            state["m"], state["u"] = torch.zeros_like(p), torch.zeros_like(p)
        (b1, b2), t, m, u = group["betas"], state["step"], state["m"], state["u"]
        m.add_((grad - m) * (1 - b1))
        torch.maximum(u * b2, grad.abs(), out=u)
        p.sub_(group["lr"] * m / ((1 - _f32(b1) ** t) * (u + group["eps"])))


class KerasSGD(_KerasOptimizer):
    """Keras SGD: with momentum v ← momentum·v − lr·g, p ← p + v; without, p ← p − lr·g."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, *, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _update(self, p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        if not group["momentum"]:
            p.sub_(grad * group["lr"])
            return
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(p)
        velocity = state["velocity"]
        velocity.mul_(group["momentum"]).sub_(grad * group["lr"])
        p.add_(velocity)


def build_optimizer(params: TrainParams, model: nn.Module, *, keras: bool) -> torch.optim.Optimizer:
    """Return the run's optimiser over the model's trainable parameters: Keras' definition when
    `keras`, PyTorch's defaults otherwise."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr, wd, name = params.lr, params.weight_decay, params.optimizer
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
