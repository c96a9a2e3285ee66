"""An encoder as a run names it, by reference: its name, constructor overrides, and the local
weights file with the digest of that file's bytes. A registered probe keeps this, not a copy of
the weights; the embedding cache's key and every probe run's params carry the digest."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._weights import WeightsFileError, local_weights_file
from ._build import Encoder, create_encoder, weights_digest

# A folder searched for a referenced weights file that is not where the run read it.
WEIGHTS_ENV = "HISTO_HARNESS_WEIGHTS"
SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


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

    def located(self) -> Path | None:
        """Return the weights file: where the run read it, else a file of the same bytes under the
        folder $HISTO_HARNESS_WEIGHTS names (a copy on another machine, found by its digest); None
        for random weights. Raises WeightsFileError, one line, when neither holds it."""
        if self.weights is None or self.weights.is_file():
            return self.weights
        folder = os.environ.get(WEIGHTS_ENV)
        for path in sorted(Path(folder).expanduser().rglob("*")) if folder else []:
            if path.suffix in SUFFIXES and path.is_file() and weights_digest(path) == self.sha256:
                return path
        raise WeightsFileError(
            f"weights file {str(self.weights)!r} does not exist (weights are never downloaded): set {WEIGHTS_ENV} "
            f"to a folder holding a copy, found there by its sha256 {str(self.sha256)[:12]}..."
        )

    def build(self) -> Encoder:
        """Return the encoder with its weights read from the file (or its copy, `located`); raises
        WeightsFileError, one line, when there is none or its bytes are not the ones referenced."""
        path = self.located()
        if path is not None and self.sha256 is not None:
            now = weights_digest(path)
            if now != self.sha256:
                raise WeightsFileError(
                    f"weights file {str(path)!r} is not the one this model was trained with "
                    f"(sha256 {now[:12]}..., expected {self.sha256[:12]}...)"
                )
        return create_encoder(self.name, path, **self.arch)
