"""The histo-harness model zoo: `baselines.create(name, ...)` builds any registered baseline."""

from __future__ import annotations

from . import attention_gate, gusa, idc_small, mil, probes, transfer  # noqa: F401  (importing a family registers it)
from ._counting import param_counts
from ._keras import KERAS_EPSILON
from ._registry import (
    BaselineInfo,
    Framework,
    PublishedCount,
    Semantics,
    UnknownBaselineError,
    create,
    info,
    list_baselines,
    register,
    source_framework,
    uses_keras_semantics,
)
from ._summary import ModelSummary, summarise, summarise_all
from ._weights import WeightsFileError, check_weights_file
from .encoders import (
    EmbeddingKind,
    Encoder,
    EncoderPreset,
    EncoderRef,
    EncoderWithoutBlocksError,
    KeyLayout,
    UnknownEncoderError,
    create_encoder,
    encoder_depth,
    encoder_dim,
    encoder_preset,
    list_encoders,
    resolved_preset,
    weights_digest,
    write_random_encoder,
)

list = list_baselines  # noqa: A001  (the documented public name is baselines.list())

__all__ = [
    "KERAS_EPSILON",
    "BaselineInfo",
    "EmbeddingKind",
    "Encoder",
    "EncoderWithoutBlocksError",
    "EncoderPreset",
    "EncoderRef",
    "Framework",
    "KeyLayout",
    "ModelSummary",
    "PublishedCount",
    "Semantics",
    "UnknownBaselineError",
    "UnknownEncoderError",
    "WeightsFileError",
    "check_weights_file",
    "create",
    "create_encoder",
    "encoder_depth",
    "encoder_dim",
    "encoder_preset",
    "info",
    "list",
    "list_baselines",
    "list_encoders",
    "resolved_preset",
    "param_counts",
    "register",
    "summarise",
    "source_framework",
    "summarise_all",
    "uses_keras_semantics",
    "weights_digest",
    "write_random_encoder",
]
