"""Key names of published encoder files <-> timm's, both ways.

A file in the "timm" layout holds timm's own names. transformers' ViTModel ("hf_vit", Phikon) and
Dinov2Model ("hf_dinov2", Phikon-v2) name the same tensors otherwise and keep query, key and value
as three linear layers where timm fuses them into one `attn.qkv` (rows q, then k, then v).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from .presets import KeyLayout

# Whole-file wrappers a training framework adds to every key (DistributedDataParallel's "module.",
# Lightning's "model.", eva's and DINOv2 training's "backbone."): stripped only when every key has one.
WRAPPER_PREFIXES = ("module.", "model.", "backbone.")
# Tensors a published file carries that the encoder never uses: ViTModel's tanh pooler (the
# embedding is the CLS token, not the pooler's output) and Dinov2Model's mask token (pretraining only).
UNUSED_KEYS: dict[KeyLayout, tuple[str, ...]] = {
    "timm": (),
    "hf_vit": ("pooler.dense.weight", "pooler.dense.bias"),
    "hf_dinov2": ("embeddings.mask_token",),
}

_HF_GLOBAL = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
}
# Per block, published module (or parameter) -> timm's; the suffix (.weight, .bias) carries over.
_HF_BLOCK: dict[KeyLayout, dict[str, str]] = {
    "hf_vit": {
        "layernorm_before": "norm1",
        "attention.output.dense": "attn.proj",
        "layernorm_after": "norm2",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    },
    "hf_dinov2": {
        "norm1": "norm1",
        "attention.output.dense": "attn.proj",
        "layer_scale1.lambda1": "ls1.gamma",
        "norm2": "norm2",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "layer_scale2.lambda1": "ls2.gamma",
    },
}
_QKV = ("query", "key", "value")
_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def unwrap(state: Mapping[str, Tensor], layout: KeyLayout) -> dict[str, Tensor]:
    """Return the file's state dict without a whole-file wrapper prefix and without the published
    tensors the encoder does not use (UNUSED_KEYS), still in the file's names."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key.removeprefix(prefix): value for key, value in state.items()}
            break
    return {key: value for key, value in state.items() if key not in UNUSED_KEYS[layout]}


def published_keys(timm_keys: Iterable[str], layout: KeyLayout) -> list[str]:
    """Return the names a published file of `layout` gives the tensors timm calls `timm_keys`."""
    return [name for key in timm_keys for name in _published_names(key, layout)]


def to_timm(state: Mapping[str, Tensor], layout: KeyLayout) -> dict[str, Tensor]:
    """Return an unwrapped published state dict under timm's names (q, k, v fused into qkv); keys
    the mapping does not know pass through unchanged, so a strict load names them."""
    if layout == "timm":
        return dict(state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _HF_LAYER.fullmatch(key)
        if match and match[2].startswith("attention.attention."):
            continue  # fused below, once per block and suffix
        out[_timm_name(key, layout) or key] = value
    for key in state:
        match = _HF_LAYER.fullmatch(key)
        if match and match[2].startswith("attention.attention.query."):
            block, suffix = match[1], match[2].rsplit(".", 1)[1]
            parts = [f"encoder.layer.{block}.attention.attention.{p}.{suffix}" for p in _QKV]
            if all(part in state for part in parts):
                out[f"blocks.{block}.attn.qkv.{suffix}"] = torch.cat([state[part] for part in parts])
    return out


def from_timm(state: Mapping[str, Tensor], layout: KeyLayout) -> dict[str, Tensor]:
    """Return a timm state dict under the names a published file of `layout` uses (qkv split)."""
    if layout == "timm":
        return dict(state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        names = _published_names(key, layout)
        parts = value.chunk(len(names)) if len(names) > 1 else (value,)
        out.update({name: part.contiguous() for name, part in zip(names, parts, strict=True)})
    return out


def _timm_name(key: str, layout: KeyLayout) -> str | None:
    match = _HF_LAYER.fullmatch(key)
    if match is None:
        return _renamed(key, _HF_GLOBAL)
    inner = _renamed(match[2], _HF_BLOCK[layout])
    return f"blocks.{match[1]}.{inner}" if inner else None


def _published_names(key: str, layout: KeyLayout) -> list[str]:
    if layout == "timm":
        return [key]
    inverse_global = {timm: hf for hf, timm in _HF_GLOBAL.items()}
    match = _TIMM_BLOCK.fullmatch(key)
    if match is None:
        return [_renamed(key, inverse_global) or key]
    if match[2].startswith("attn.qkv."):
        suffix = match[2].rsplit(".", 1)[1]
        return [f"encoder.layer.{match[1]}.attention.attention.{p}.{suffix}" for p in _QKV]
    inverse_block = {timm: hf for hf, timm in _HF_BLOCK[layout].items()}
    inner = _renamed(match[2], inverse_block)
    return [f"encoder.layer.{match[1]}.{inner}" if inner else key]


def _renamed(key: str, table: Mapping[str, str]) -> str | None:
    # A table entry names a module (its .weight/.bias follow) or a parameter itself.
    for old, new in table.items():
        if key == old:
            return new
        if key.startswith(old + ".") and "." not in key[len(old) + 1 :]:
            return new + key[len(old) :]
    return None
