"""Keras/TensorFlow layer semantics on a built PyTorch model (BASELINES.md §0.5).

The layer list stays; what changes is what Keras does by default and PyTorch does not:
BatchNormalization's epsilon 1e-3 and momentum 0.99, glorot_uniform kernels with zero biases,
the running variance of a Dense-layer BatchNormalization, and a frozen BatchNormalization that
runs in inference mode. A part of a model that Keras builds with other constants (an application
backbone, a layer whose source names its initialiser) is marked with `keras_layers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ._weights import weights_from_file

Initializer = Literal["glorot_uniform", "he_uniform"]
# keras.backend.epsilon(): Keras' probability clipping in its losses and its optimisers' epsilon.
KERAS_EPSILON = 1e-7
_SPEC = "keras_layers"
_ModuleT = TypeVar("_ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class KerasLayers:
    """Keras constants of a part of a model.

    `bn_momentum` is in Keras' convention (moving = momentum·moving + (1 − momentum)·batch);
    `kernel_initializer` None keeps the part's own initialisation (its Keras original is not a
    layer default, and the PyTorch port already follows it).
    """

    bn_epsilon: float = 1e-3
    bn_momentum: float = 0.99
    kernel_initializer: Initializer | None = "glorot_uniform"


KERAS_DEFAULTS = KerasLayers()
HE_UNIFORM = KerasLayers(kernel_initializer="he_uniform")
# keras.applications.DenseNet* (the ImageNet DenseNets that ship with TensorFlow): BN epsilon 1.001e-5.
KERAS_DENSENET = KerasLayers(bn_epsilon=1.001e-5)
# keras.applications.EfficientNetV2*: BN epsilon 1e-3, momentum 0.9, its own variance-scaling
# initialisers; timm's tf_efficientnetv2 port already has these constants and a like initialiser.
KERAS_EFFICIENTNETV2 = KerasLayers(bn_momentum=0.9, kernel_initializer=None)


def keras_layers(module: _ModuleT, spec: KerasLayers) -> _ModuleT:
    """Return `module`, marked so that Keras semantics give it and its layers `spec`.

    Every layer is marked, not only the container, so that the mark survives when a model takes
    the layers out of it (the GuSA trunk takes DenseNet's blocks); marked parts inside keep theirs.
    """
    for layer in module.modules():
        if not hasattr(layer, _SPEC):
            setattr(layer, _SPEC, spec)
    return module


class KerasBatchNorm1d(nn.BatchNorm1d):
    """A BatchNorm1d whose moving variance averages the biased batch variance, as Keras does.

    tf.keras 2.x (non-fused, as for every Dense-layer BN) and Keras 3 average the variance they
    normalise with; torch averages the unbiased one, n/(n − 1) larger (3 % at batch 32).
    Convolutional BN needs no change: tf.keras 2.x's fused kernel averages the unbiased variance
    like torch, and over B·H·W values the two hardly differ.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats and self.momentum is not None):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        # track_running_stats registered the three buffers.
        assert self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
        with torch.no_grad():
            # In the statistics' own dtype: under autocast x may be bfloat16 or float16.
            stats = x.to(self.running_mean.dtype)
            self.running_mean.lerp_(stats.mean(dims), self.momentum)
            self.running_var.lerp_(stats.var(dims, unbiased=False), self.momentum)
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _frozen_bn_in_inference(module: nn.Module, _: Any) -> None:
    # Keras runs a BatchNormalization whose layer is not trainable in inference mode (moving
    # statistics, no update); torch would keep normalising with batch statistics.
    params = list(module.parameters())
    if module.training and params and not any(p.requires_grad for p in params):
        module.training = False


def keras_fans(weight: torch.Tensor, groups: int) -> tuple[int, int]:
    """Return (fan_in, fan_out) of a torch Linear/Conv weight as Keras counts them for its kernel.

    Keras' depthwise kernel is (h, w, in, multiplier): fan_in counts every input channel, where
    torch's (in·multiplier, 1, h, w) weight would count one.
    """
    out_channels, in_per_group = weight.shape[:2]
    receptive = math.prod(weight.shape[2:])
    if groups > 1 and in_per_group == 1:
        return receptive * groups, receptive * out_channels // groups
    return receptive * in_per_group, receptive * out_channels


def keras_limit(initializer: Initializer, fan_in: int, fan_out: int) -> float:
    """Return the bound of Keras' uniform initialiser: U(−limit, limit)."""
    scale = 1.0 / ((fan_in + fan_out) / 2) if initializer == "glorot_uniform" else 2.0 / fan_in
    return math.sqrt(3.0 * scale)


def _initialise(layer: nn.Conv2d | nn.Linear, initializer: Initializer) -> None:
    limit = keras_limit(initializer, *keras_fans(layer.weight, getattr(layer, "groups", 1)))
    with torch.no_grad():
        layer.weight.uniform_(-limit, limit)
        if layer.bias is not None:
            layer.bias.zero_()


def _set_batch_norm(bn: nn.modules.batchnorm._BatchNorm, spec: KerasLayers) -> None:
    bn.eps, bn.momentum = spec.bn_epsilon, 1.0 - spec.bn_momentum
    if type(bn) is nn.BatchNorm1d:
        # Same parameters, buffers and place in the layer list; only the update rule changes.
        bn.__class__ = KerasBatchNorm1d
    bn.register_forward_pre_hook(_frozen_bn_in_inference)


def _specs(module: nn.Module, inherited: KerasLayers) -> Iterator[tuple[nn.Module, KerasLayers]]:
    spec = getattr(module, _SPEC, inherited)
    yield module, spec
    for child in module.children():
        yield from _specs(child, spec)


def apply_keras_semantics(model: nn.Module) -> nn.Module:
    """Return `model` with Keras' BatchNormalization constants and initialisers, in place.

    Layers whose weights came from a file keep them; the others get their part's Keras
    initialiser (glorot_uniform unless marked otherwise) and zero biases.
    """
    for module, spec in _specs(model, KERAS_DEFAULTS):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            _set_batch_norm(module, spec)
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and spec.kernel_initializer and not weights_from_file(module):
            _initialise(module, spec.kernel_initializer)
    return model
