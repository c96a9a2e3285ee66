"""Name -> builder registry for the model zoo, in the manner of timm and torchvision."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Literal, cast

from torch import nn

from ._keras import apply_keras_semantics

Convention = Literal["torch", "keras", "weights_only"]
LossName = Literal["ce", "ce_dice", "ce_guide"]
# The framework the source trained in: tf.keras/Keras, TensorFlow (API not published; its layer and
# initialiser defaults are Keras'), or PyTorch (BASELINES.md §0.5).
Framework = Literal["keras", "tensorflow", "pytorch"]
Semantics = Literal["source", "torch"]
# What a model takes: images, bags of patches, or an encoder's (B, D) embeddings of images.
InputKind = Literal["image", "bag", "embedding"]
# Outputs that are a model's own explanation map (baselines/maps.py draws them; Grad-CAM otherwise).
OWN_MAP_OUTPUTS = frozenset({"roi", "attention", "attention_map"})


@dataclass(frozen=True)
class PublishedCount:
    """A parameter count as printed in a source, and whether a harness layout reproduces it."""

    count: int
    convention: Convention
    reproduced: bool
    source: str


@dataclass(frozen=True)
class BaselineInfo:
    """What the harness knows about a registered baseline before building it."""

    name: str
    family: str
    input_size: tuple[int, int]
    builder: Callable[..., nn.Module]
    outputs: tuple[str, ...]
    loss: LossName
    input_kind: InputKind
    published: PublishedCount | None
    published_classes: int
    framework: Framework

    @property
    def has_own_maps(self) -> bool:
        """Return True when the model outputs a map of its own (RoI or attention), which can be
        scored against RoI masks; the others get Grad-CAM maps, which are not scored."""
        return bool(OWN_MAP_OUTPUTS & set(self.outputs))

    @property
    def needs_roi(self) -> bool:
        """Return True when training needs an RoI mask per image (its loss reads one)."""
        return self.loss != "ce"

    @property
    def takes_encoder(self) -> bool:
        """Return True when the baseline is built on a foundation-model encoder (option `encoder`)."""
        return "encoder" in self.model_kwargs()

    def default(self, option: str) -> Any:
        """Return the builder's default value of model option `option`."""
        return inspect.signature(self.builder).parameters[option].default

    def model_kwargs(self) -> set[str]:
        """Return the keyword arguments the builder accepts beyond the common ones."""
        params = inspect.signature(self.builder).parameters
        return {n for n in params if n not in {"num_classes", "pretrained"}}


class UnknownBaselineError(KeyError):
    """Raised for a name that is not registered; the message lists close names."""

    def __str__(self) -> str:
        return str(self.args[0])


_REGISTRY: dict[str, BaselineInfo] = {}


def register(
    name: str,
    *,
    framework: Framework,
    input_size: int | tuple[int, int],
    outputs: tuple[str, ...] = ("logits",),
    loss: LossName = "ce",
    input_kind: InputKind = "image",
    published: PublishedCount | None = None,
    published_classes: int = 2,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Return a decorator that registers a model builder under `name`; duplicates are refused.

    `framework` is the one the source trained in; `input_size` is the published input, (height,
    width) or one side of a square; `published_classes` the number of classes its published row
    was trained with.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"baseline {name!r} is already registered")
        size = (input_size, input_size) if isinstance(input_size, int) else cast(tuple[int, int], tuple(input_size))
        _REGISTRY[name] = BaselineInfo(
            name=name,
            family=builder.__module__.rsplit(".", 1)[-1],
            input_size=size,
            builder=builder,
            outputs=outputs,
            loss=loss,
            input_kind=input_kind,
            published=published,
            published_classes=published_classes,
            framework=framework,
        )
        return builder

    return decorator


def info(name: str) -> BaselineInfo:
    """Return the registry entry of `name`, or raise UnknownBaselineError naming close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownBaselineError(
            f"unknown baseline {name!r}{hint} (registered: {', '.join(list_baselines())})"
        ) from None


def source_framework(name: str) -> Framework:
    """Return the framework the source of baseline `name` trained in."""
    return info(name).framework


def uses_keras_semantics(baseline: str, semantics: str) -> bool:
    """Return True when `baseline` trains with Keras' defaults: semantics "source" and a Keras/TF source.

    `semantics` is `training.semantics`: "source" follows the source's framework, "torch" keeps
    PyTorch's defaults for every baseline.
    """
    if semantics not in ("source", "torch"):
        raise ValueError(f"semantics {semantics!r}: expected source or torch")
    return semantics == "source" and source_framework(baseline) != "pytorch"


def list_baselines() -> list[str]:
    """Return the registered names, sorted."""
    return sorted(_REGISTRY)


def create(
    name: str,
    num_classes: int,
    pretrained: str | None = None,
    *,
    semantics: Semantics = "source",
    **kwargs: Any,
) -> nn.Module:
    """Build baseline `name`; keyword arguments that are None keep the model's default.

    `semantics` "source" builds a baseline whose source ran Keras/TensorFlow with Keras'
    BatchNormalization constants and initialisers (`apply_keras_semantics`); "torch" keeps
    PyTorch's defaults.
    """
    entry = info(name)
    keras = uses_keras_semantics(name, semantics)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    unknown = set(kwargs) - entry.model_kwargs()
    if unknown:
        raise TypeError(
            f"baseline {name!r} takes no option {', '.join(sorted(unknown))} "
            f"(it takes: {', '.join(sorted(entry.model_kwargs())) or 'none'})"
        )
    model = entry.builder(num_classes=num_classes, pretrained=pretrained, **kwargs)
    return apply_keras_semantics(model) if keras else model
