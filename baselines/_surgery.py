"""Backbone surgery shared by the baselines: timm models from local weights, freezing, trunks."""

from __future__ import annotations

from typing import Any, Iterable, Literal

import timm
from torch import nn

from ._keras import KERAS_DENSENET, keras_layers
from ._weights import load_state_dict_file, local_weights_file

FreezeMode = Literal["none", "head_only", "last_stage"]


def timm_model(arch: str, num_classes: int, pretrained: str | None, **kwargs: Any) -> nn.Module:
    """Return timm model `arch` with a new `num_classes` head and weights from a local file only.

    The file is a state dict in timm's key names (.pth or .safetensors). It is loaded strictly
    except for the classifier, which is always new: timm's own loader would drop mismatched keys
    silently, so a file of another architecture would load nothing and say nothing.
    """
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    weights = local_weights_file(pretrained)
    if weights is not None:
        classifier = net.pretrained_cfg.get("classifier") or "classifier"
        load_state_dict_file(net, weights, what=arch, skip_prefixes=(f"{classifier}.",))
    return net


def freeze_parameters(
    model: nn.Module, mode: FreezeMode, *, head: nn.Module, last_stage: nn.Module | None = None
) -> nn.Module:
    """Let only `head` (and `last_stage` for mode last_stage) train; mode none trains everything."""
    if mode == "none":
        return model
    trainable: Iterable[nn.Parameter] = list(head.parameters())
    if mode == "last_stage":
        if last_stage is None:
            raise ValueError("this model has no last stage to unfreeze")
        trainable = [*trainable, *last_stage.parameters()]
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad = id(p) in keep
    return model


def require_weights_to_freeze(pretrained: str | None, mode: FreezeMode) -> None:
    """Refuse to freeze a randomly initialised backbone."""
    if pretrained is None and mode != "none":
        raise ValueError(f"freeze={mode!r} needs pretrained weights; without a weights file use freeze='none'")


def densenet_stages(pretrained: str | None, arch: str = "densenet169.tv_in1k") -> nn.Module:
    """Return the `features` of a timm DenseNet (conv0 ... denseblock4, norm5), weights from a file.

    Under Keras semantics it takes Keras' DenseNet constants (the trunk of 001's TensorFlow models).
    """
    return keras_layers(timm_model(arch, num_classes=0, pretrained=pretrained).features, KERAS_DENSENET)
