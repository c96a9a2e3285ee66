"""Foundation-model encoders by name (`presets`) or `timm:<arch>`, loaded from local files only."""

from __future__ import annotations

from ._build import (
    Encoder,
    EncoderWithoutBlocksError,
    create_encoder,
    encoder_depth,
    encoder_dim,
    resolved_preset,
    weights_digest,
    write_random_encoder,
)
from .presets import (
    EmbeddingKind,
    EncoderPreset,
    KeyLayout,
    UnknownEncoderError,
    encoder_preset,
    list_encoders,
)
from .reference import EncoderRef

__all__ = [
    "EmbeddingKind",
    "Encoder",
    "EncoderWithoutBlocksError",
    "EncoderPreset",
    "EncoderRef",
    "KeyLayout",
    "UnknownEncoderError",
    "create_encoder",
    "encoder_depth",
    "encoder_dim",
    "encoder_preset",
    "list_encoders",
    "resolved_preset",
    "weights_digest",
    "write_random_encoder",
]
