"""Local pretrained weights: the harness never downloads a checkpoint."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import torch
from torch import nn

_FROM_FILE = "weights_from_file"
# What torch.save wrote before its files became zip archives: pickle protocol 2, then this number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


class WeightsFileError(ValueError):
    """A weights file that is missing, is not a state dict, or does not fit its model; a retry
    would meet it again."""


def local_weights_file(pretrained: str | None) -> Path | None:
    """Return the weights file as an existing Path, None when absent, or raise naming the path."""
    if pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise WeightsFileError(f"pretrained weights file {str(path)!r} does not exist (weights are never downloaded)")
    return path.resolve()


def _safetensors_header(path: Path) -> bool:
    """Return whether `path` starts as a safetensors file: a header length, then a JSON object."""
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            return False
        (length,) = struct.unpack("<Q", head)
        if length > path.stat().st_size - 8:
            return False
        try:
            return isinstance(json.loads(file.read(length)), dict)
        except ValueError:
            return False


def check_weights_file(pretrained: str | Path) -> Path:
    """Return the resolved path of a file that looks like weights (safetensors, or torch.save's zip
    or legacy format) from its first bytes; raises WeightsFileError naming it otherwise. Whether
    its keys fit the model is known only when the model is built."""
    path = local_weights_file(str(pretrained))
    assert path is not None
    if path.suffix == ".safetensors":
        if not _safetensors_header(path):
            raise WeightsFileError(f"weights file {str(path)!r} is not a safetensors file")
        return path
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            if file.read(len(_LEGACY_TORCH_MAGIC)) != _LEGACY_TORCH_MAGIC:
                raise WeightsFileError(f"weights file {str(path)!r} is not a file torch.save wrote (nor .safetensors)")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Return the state dict a weights file holds (safetensors or torch.save, a "state_dict" entry
    unwrapped); raises WeightsFileError naming the file when it holds none."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise several types for a file that is not a checkpoint
        raise WeightsFileError(f"weights file {str(path)!r} is not a torch state dict ({exc})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise WeightsFileError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def key_mismatch(path: Path, what: str, missing: list[str], unexpected: list[str]) -> WeightsFileError:
    """Return the one-line error for a file whose keys are not the model's, naming the first of each."""
    detail = "; ".join(
        f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected))
        if keys
    )
    return WeightsFileError(f"weights file {str(path)!r} does not fit {what}: {detail}")


def load_state_dict_file(module: nn.Module, path: Path, *, what: str, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Load a state-dict file into `module`, ignoring keys under `skip_prefixes` (a replaced head).

    A file that is not a state dict of `what` fails with one message naming the file and the
    first mismatching keys.
    """
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(skip_prefixes)}
    own = {k for k in module.state_dict() if not k.startswith(skip_prefixes)}
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise key_mismatch(path, what, missing, unexpected)
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise shape_mismatch(path, what, exc) from None
    _mark_loaded(module, set(state))


def shape_mismatch(path: Path, what: str, exc: RuntimeError) -> WeightsFileError:
    """Return the one-line error for a file whose keys fit but a tensor's shape does not."""
    return WeightsFileError(f"weights file {str(path)!r} does not fit {what}: {str(exc).splitlines()[1].strip()}")


def _mark_loaded(module: nn.Module, keys: set[str]) -> None:
    # Framework semantics re-initialise only layers that start from random weights.
    for prefix, layer in module.named_modules():
        names = [f"{prefix}.{n}" if prefix else n for n, _ in layer.named_parameters(recurse=False)]
        if names and all(n in keys for n in names):
            setattr(layer, _FROM_FILE, True)


def weights_from_file(layer: nn.Module) -> bool:
    """Return True when every parameter of `layer` itself was loaded from a weights file."""
    return getattr(layer, _FROM_FILE, False)
