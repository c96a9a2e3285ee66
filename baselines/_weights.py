"""Local pretrained weights: the harness never downloads a checkpoint."""

from __future__ import annotations

from pathlib import Path


def local_weights_file(pretrained: str | None) -> Path | None:
    """Return the weights file as an existing Path, None when absent, or raise naming the path."""
    if pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(path)!r} does not exist (weights are never downloaded)")
    return path.resolve()
