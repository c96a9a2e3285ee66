"""Backbone surgery shared by the baselines: timm models from local weights, freezing, trunks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Literal, TypeVar, cast

import timm
import torch
from torch import nn

from ._keras import KERAS_DENSENET, keras_layers
from ._weights import load_state_dict_file, local_weights_file

FreezeMode = Literal["none", "head_only", "last_stage"]
_ModuleT = TypeVar("_ModuleT", bound=nn.Module)

if TYPE_CHECKING:
    # timm types every model as a plain nn.Module, whose attributes mypy reads as Tensor | Module;
    # these say what the baselines use of them.

    class TimmNet(nn.Module):
        """A timm model: its pretrained config, feature info, classifier and the two halves of forward."""

        pretrained_cfg: dict[str, Any]
        feature_info: list[dict[str, Any]]
        num_features: int

        def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...
        def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...
        def get_classifier(self) -> nn.Module: ...

    class DenseNetStages(nn.Module):
        """The `features` of a timm DenseNet."""

        conv0: nn.Module
        norm0: nn.Module
        pool0: nn.Module
        denseblock1: nn.Module
        transition1: nn.Module
        denseblock2: nn.Module
        transition2: nn.Module
        denseblock3: nn.Module
        transition3: nn.Module
        denseblock4: nn.Module
        norm5: nn.Module


def timm_model(arch: str, num_classes: int, pretrained: str | None, **kwargs: Any) -> TimmNet:
    """Return timm model `arch` with a new `num_classes` head and weights from a local file only.

    The file is a state dict in timm's key names (.pth or .safetensors). It is loaded strictly
    except for the classifier, which is always new: timm's own loader would drop mismatched keys
    silently, so a file of another architecture would load nothing and say nothing.
    """
    net = cast("TimmNet", timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs))
    weights = local_weights_file(pretrained)
    if weights is not None:
        classifier = net.pretrained_cfg.get("classifier") or "classifier"
        load_state_dict_file(net, weights, what=arch, skip_prefixes=(f"{classifier}.",))
    return net


def freeze_parameters(
    model: _ModuleT, mode: FreezeMode, *, head: nn.Module, last_stage: nn.Module | None = None
) -> _ModuleT:
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


def densenet_stages(pretrained: str | None, arch: str = "densenet169.tv_in1k") -> DenseNetStages:
    """Return the `features` of a timm DenseNet (conv0 ... denseblock4, norm5), weights from a file.

    Under Keras semantics it takes Keras' DenseNet constants (the trunk of 001's TensorFlow models).
    """
    features = cast("DenseNetStages", timm_model(arch, num_classes=0, pretrained=pretrained).features)
    return keras_layers(features, KERAS_DENSENET)
