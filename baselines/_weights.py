"""Local pretrained weights: the harness never downloads a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

_FROM_FILE = "weights_from_file"


def local_weights_file(pretrained: str | None) -> Path | None:
    """Return the weights file as an existing Path, None when absent, or raise naming the path."""
    if pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(path)!r} does not exist (weights are never downloaded)")
    return path.resolve()


def load_state_dict_file(module: nn.Module, path: Path, *, what: str, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Load a state-dict file into `module`, ignoring keys under `skip_prefixes` (a replaced head).

    A file that is not a state dict of `what` fails with one message naming the file and the
    first mismatching keys.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise several types for a file that is not a checkpoint
        raise ValueError(f"weights file {str(path)!r} is not a torch state dict ({exc})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict")
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    own = {k for k in module.state_dict() if not k.startswith(skip_prefixes)}
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        detail = "; ".join(
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        )
        raise ValueError(f"weights file {str(path)!r} does not fit {what}: {detail}")
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(
            f"weights file {str(path)!r} does not fit {what}: {str(exc).splitlines()[1].strip()}"
        ) from None
    _mark_loaded(module, set(state))


def _mark_loaded(module: nn.Module, keys: set[str]) -> None:
    # Framework semantics re-initialise only layers that start from random weights.
    for prefix, layer in module.named_modules():
        names = [f"{prefix}.{n}" if prefix else n for n, _ in layer.named_parameters(recurse=False)]
        if names and all(n in keys for n in names):
            setattr(layer, _FROM_FILE, True)


def weights_from_file(layer: nn.Module) -> bool:
    """Return True when every parameter of `layer` itself was loaded from a weights file."""
    return getattr(layer, _FROM_FILE, False)
