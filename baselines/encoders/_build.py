"""An encoder: a timm trunk behind the preset's input transform and pooling, loaded from a local file."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._weights import key_mismatch, local_weights_file, read_state_dict, shape_mismatch
from . import keymaps
from .presets import EmbeddingKind, EncoderPreset, encoder_preset


class EncoderWithoutBlocksError(ValueError):
    """Raised for an encoder whose timm trunk lists no blocks or stages (nothing to fine-tune by depth)."""


class Encoder(nn.Module):
    """Images in [0, 1], (B, 3, H, W) -> embeddings (B, dim): resized to the preset's input size
    when they differ from it, normalised with its mean/std, pooled as its `embedding` says."""

    # A timm model: forward_features, forward_head and the token counts are timm's, not nn.Module's.
    trunk: Any
    mean: Tensor
    std: Tensor

    def __init__(self, preset: EncoderPreset, trunk: nn.Module) -> None:
        super().__init__()
        self.preset = preset
        self.trunk = trunk
        needs_cls = preset.embedding in ("cls", "cls+mean")
        if needs_cls and getattr(trunk, "cls_token", None) is None:
            raise ValueError(f"encoder {preset.name!r}: embedding {preset.embedding!r} needs a class token")
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)
        self.dim = _embedding_dim(preset, trunk)

    def forward(self, images: Tensor) -> Tensor:
        """Return the (B, dim) float embeddings of a batch of images in [0, 1]."""
        size = self.preset.input_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        tokens = self.trunk.forward_features((images - self.mean) / self.std)
        kind = self.preset.embedding
        if kind == "pooled":
            return self.trunk.forward_head(tokens, pre_logits=True)
        # Tokens are [CLS, registers..., patches...]: the mean is over patch tokens only.
        patches = tokens[:, self.trunk.num_prefix_tokens :].mean(dim=1)
        if kind == "mean":
            return patches
        return tokens[:, 0] if kind == "cls" else torch.cat([tokens[:, 0], patches], dim=-1)

    def blocks(self) -> list[nn.Module]:
        """Return the trunk's transformer blocks (or a CNN's stages), input side first."""
        for attribute in ("blocks", "stages", "layers"):
            sequence = getattr(self.trunk, attribute, None)
            if isinstance(sequence, (nn.Sequential, nn.ModuleList)):
                return list(sequence)
        resnet_stages = [module for name, module in self.trunk.named_children() if re.fullmatch(r"layer\d+", name)]
        if resnet_stages:
            return resnet_stages
        raise EncoderWithoutBlocksError(
            f"encoder {self.preset.name!r}: timm's {self.preset.arch} has no blocks or stages to list"
        )


def _embedding_dim(preset: EncoderPreset, trunk: Any) -> int:
    width = int(trunk.num_features)
    if preset.embedding == "pooled":
        return int(getattr(trunk, "head_hidden_size", width))
    return 2 * width if preset.embedding == "cls+mean" else width


# Overrides that describe the recipe around the trunk rather than its constructor: an encoder by
# recipe is `timm:<arch>` (or a preset) with these beside its constructor arguments.
RECIPE_KEYS = ("input_size", "mean", "std", "embedding")


def resolved_preset(name: str, **arch: Any) -> EncoderPreset:
    """Return encoder `name` as built with overrides `arch`: `input_size`, `mean`, `std` and
    `embedding` replace the preset's, every other key joins its constructor arguments (an
    `img_size` there is also its input size). Raises ValueError naming a recipe value out of range."""
    preset = encoder_preset(name)
    if not arch:
        return preset
    recipe = {k: v for k, v in arch.items() if k in RECIPE_KEYS}
    kwargs = {k: v for k, v in arch.items() if k not in RECIPE_KEYS}
    size = recipe.get("input_size", kwargs.get("img_size", preset.input_size))
    resolved = replace(
        preset,
        kwargs={**preset.kwargs, **kwargs},
        input_size=int(size),
        mean=tuple(recipe.get("mean", preset.mean)),
        std=tuple(recipe.get("std", preset.std)),
        embedding=recipe.get("embedding", preset.embedding),
    )
    if resolved.embedding not in get_args(EmbeddingKind) or len(resolved.mean) != 3 or len(resolved.std) != 3:
        raise ValueError(
            f"encoder {name!r}: embedding must be one of {', '.join(get_args(EmbeddingKind))} and mean and std "
            f"three numbers each (got {resolved.embedding!r}, {list(resolved.mean)}, {list(resolved.std)})"
        )
    return resolved


def _trunk(preset: EncoderPreset) -> nn.Module:
    # pretrained=False: timm builds the architecture only and never reaches for a download.
    return timm.create_model(preset.arch, pretrained=False, num_classes=0, **preset.kwargs)


def create_encoder(name: str, weights: str | Path | None, **arch: Any) -> Encoder:
    """Return encoder `name` (a preset or `timm:<arch>`) with constructor overrides `arch`, random
    when `weights` is None, else loaded strictly from that local file through the preset's key
    mapping; raises WeightsFileError naming the file (and keys) when it is missing or does not fit."""
    preset = resolved_preset(name, **arch)
    path = local_weights_file(None if weights is None else str(weights))
    encoder = Encoder(preset, _trunk(preset))
    if path is not None:
        _load(encoder, path)
    return encoder.eval()


def _load(encoder: Encoder, path: Path) -> None:
    preset = encoder.preset
    what = f"encoder {preset.name!r} ({preset.layout} layout)"
    state = keymaps.unwrap(read_state_dict(path), preset.layout)
    # Compared in the file's own names, so the message names keys a user can find in the file.
    expected = set(keymaps.published_keys(encoder.trunk.state_dict(), preset.layout))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise key_mismatch(path, what, missing, unexpected)
    try:
        encoder.trunk.load_state_dict(keymaps.to_timm(state, preset.layout), strict=True)
    except RuntimeError as exc:
        raise shape_mismatch(path, what, exc) from None


def _on_meta(name: str, **arch: Any) -> Encoder:
    """Return encoder `name` with overrides `arch` built on the meta device (no memory for weights)."""
    preset = resolved_preset(name, **arch)
    with torch.device("meta"):
        return Encoder(preset, _trunk(preset))


def encoder_dim(name: str, **arch: Any) -> int:
    """Return the embedding width of encoder `name` with overrides `arch`, built on the meta device
    (no memory for weights)."""
    return _on_meta(name, **arch).dim


def encoder_depth(name: str, **arch: Any) -> int:
    """Return how many blocks (or CNN stages) encoder `name` with overrides `arch` has, built on the
    meta device: the largest `blocks` a fine-tune can train. Raises EncoderWithoutBlocksError."""
    return len(_on_meta(name, **arch).blocks())


def write_random_encoder(name: str, path: Path, *, seed: int = 0, **arch: Any) -> Path:
    """Write a random-initialised encoder of `name`'s family (with overrides `arch`) in the preset's
    published key layout, as the suffix says (.safetensors, else torch.save); return the path."""
    preset = resolved_preset(name, **arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = _trunk(preset)
    state = keymaps.from_timm(trunk.state_dict(), preset.layout)
    if preset.layout == "hf_dinov2":
        # Dinov2Model's files carry its (unused) mask token; transformers initialises it to zeros.
        state["embeddings.mask_token"] = torch.zeros(1, state["embeddings.cls_token"].shape[-1])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


# Where a machine keeps what the harness computes once per file (weights digests).
CACHE_ENV = "HISTO_HARNESS_CACHE"


def weights_digest(path: str | Path) -> str:
    """Return the sha256 hex digest of a weights file's bytes, computed once per (path, inode,
    size, mtime) on a machine: every trial process asks, and a 2-4 GB encoder takes seconds. Like
    rsync's default check, a rewrite in place that keeps size and mtime is not seen."""
    resolved = local_weights_file(str(path))
    assert resolved is not None
    stat = resolved.stat()
    return _digest(str(resolved), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _memo_folder() -> Path:
    """Return where this machine keeps weights digests ($HISTO_HARNESS_CACHE, by default
    ~/.cache/histo-harness), made when absent."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "histo-harness"
    folder = Path(root) / "weights-sha256"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@functools.lru_cache(maxsize=64)
def _digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    # The file's identity is part of the key: a rewritten or replaced file is hashed again.
    key = hashlib.sha256(f"{path}\0{inode}\0{size}\0{mtime_ns}".encode()).hexdigest()
    try:
        memo = _memo_folder() / key
        if memo.is_file():
            return memo.read_text().strip()
    except OSError:
        memo = None  # no writable cache folder: hash every time
    with open(path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    if memo is not None:
        tmp = memo.with_name(f"{key}.{os.getpid()}.tmp")
        try:
            tmp.write_text(digest)
            tmp.replace(memo)  # whole or absent: a concurrent trial reads either nothing or the digest
        except OSError:
            tmp.unlink(missing_ok=True)  # a full or read-only cache folder: the next process hashes again
    return digest
