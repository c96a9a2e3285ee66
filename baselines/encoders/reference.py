"""An encoder as a run names it, by reference: its name, constructor overrides, and the local
weights file with the digest of that file's bytes. A registered probe keeps this, not a copy of
the weights; the embedding cache's key and every probe run's params carry the digest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._weights import WeightsFileError, local_weights_file
from ._build import Encoder, create_encoder, weights_digest


@dataclass(frozen=True)
class EncoderRef:
    """Encoder `name` (a preset or `timm:<arch>`) with `arch` overrides, read from `weights`
    whose bytes have digest `sha256` (None for both: random weights, in tests)."""

    name: str
    arch: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    sha256: str | None = None

    @classmethod
    def of(cls, name: str, weights: str | Path | None, arch: Mapping[str, Any] | None = None) -> EncoderRef:
        """Return the reference of encoder `name` with `arch` overrides and the file `weights`,
        its digest read now; raises WeightsFileError naming a missing file."""
        path = local_weights_file(str(weights)) if weights is not None else None
        return cls(name, dict(arch or {}), path, weights_digest(path) if path is not None else None)

    def build(self) -> Encoder:
        """Return the encoder with its weights read from the file; raises WeightsFileError, one
        line, when the file is missing or its bytes are not the ones referenced."""
        if self.weights is not None and self.sha256 is not None:
            path = local_weights_file(str(self.weights))
            assert path is not None
            now = weights_digest(path)
            if now != self.sha256:
                raise WeightsFileError(
                    f"weights file {str(path)!r} is not the one this model was trained with "
                    f"(sha256 {now[:12]}..., expected {self.sha256[:12]}...)"
                )
        return create_encoder(self.name, self.weights, **self.arch)
