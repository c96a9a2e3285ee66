"""Published foundation-model encoders as timm recipes: architecture, constructor arguments, input
transform, embedding and the key layout of the file a lab downloads (never fetched here)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import timm
from timm.layers import SwiGLUPacked
from torch import nn

# pooled: timm's own head pooling, forward_head(pre_logits=True), for `timm:<arch>` encoders.
EmbeddingKind = Literal["cls", "mean", "cls+mean", "pooled"]
# The key names of the published file: timm's own, or transformers' ViTModel / Dinov2Model.
KeyLayout = Literal["timm", "hf_vit", "hf_dinov2"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class EncoderPreset:
    """One encoder: the timm trunk that holds its weights, how images enter it and what it returns."""

    name: str
    arch: str
    kwargs: Mapping[str, Any] = field(hash=False)
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding: EmbeddingKind
    layout: KeyLayout
    source: str


class UnknownEncoderError(KeyError):
    """Raised for a name that is neither a preset nor `timm:<arch>`; the message lists close names."""

    def __str__(self) -> str:
        return str(self.args[0])


_UNI_SOURCE = "github.com/mahmoodlab/UNI uni/get_encoder/get_encoder.py and README (timm_kwargs)"
_H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
_H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_H_OPTIMUS = {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True}

_PRESETS: dict[str, EncoderPreset] = {
    preset.name: preset
    for preset in (
        EncoderPreset(
            name="uni",
            arch="vit_large_patch16_224",
            kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            embedding="cls",
            layout="timm",
            source=f"{_UNI_SOURCE}; hf MahmoodLab/UNI pytorch_model.bin",
        ),
        EncoderPreset(
            name="uni2_h",
            arch="vit_giant_patch14_224",
            kwargs={
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "no_embed_class": True,
                "mlp_layer": SwiGLUPacked,
                "act_layer": nn.SiLU,
                "reg_tokens": 8,
                "dynamic_img_size": True,
            },
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            embedding="cls",
            layout="timm",
            source=f"{_UNI_SOURCE} (uni2-h); eva pathology/mahmood_uni2_h; hf MahmoodLab/UNI2-h pytorch_model.bin",
        ),
        EncoderPreset(
            name="virchow2",
            arch="vit_huge_patch14_224",
            kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "mlp_ratio": 5.3375,
                "mlp_layer": SwiGLUPacked,
                "act_layer": nn.SiLU,
                "reg_tokens": 4,
                "dynamic_img_size": True,
            },
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            # The card's embedding: output[:, 0] concatenated with output[:, 5:].mean(1) (registers skipped).
            embedding="cls+mean",
            layout="timm",
            source="hf paige-ai/Virchow2 model card and config.json (as used by eva pathology/paige_virchow2)",
        ),
        EncoderPreset(
            name="h_optimus_0",
            arch="vit_giant_patch14_reg4_dinov2",
            kwargs=_H_OPTIMUS,
            input_size=224,
            mean=_H_OPTIMUS_MEAN,
            std=_H_OPTIMUS_STD,
            embedding="cls",
            layout="timm",
            source="github.com/bioptimus/releases models/h-optimus/v0 (g/14, 4 registers, 40 blocks, 1536); "
            "hf bioptimus/H-optimus-0 card (init_values 1e-5, mean/std); eva pathology/bioptimus_h_optimus_0",
        ),
        EncoderPreset(
            name="h_optimus_1",
            arch="vit_giant_patch14_reg4_dinov2",
            kwargs=_H_OPTIMUS,
            input_size=224,
            mean=_H_OPTIMUS_MEAN,
            std=_H_OPTIMUS_STD,
            embedding="cls",
            layout="timm",
            source="hf bioptimus/H-optimus-1 card: same architecture, constructor and mean/std as H-optimus-0",
        ),
        EncoderPreset(
            name="phikon",
            arch="vit_base_patch16_224",
            # LayerNorm eps stays timm's 1e-6, the iBOT network's own: the file's config.json said 1e-12
            # (transformers' default) until owkin/phikon discussion #1 set it "to match timm".
            kwargs={"img_size": 224},
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            embedding="cls",
            layout="hf_vit",
            source="hf owkin/phikon (transformers ViTModel, ViT-B/16, last_hidden_state[:, 0]); "
            "github.com/owkin/HistoSSLscaling; eva pathology/owkin_phikon",
        ),
        EncoderPreset(
            name="phikon_v2",
            arch="vit_large_patch16_224",
            # Dinov2Model: layer scale in every block, position embeddings interpolated to the grid.
            kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            embedding="cls",
            layout="hf_dinov2",
            source="hf owkin/phikon-v2 (transformers Dinov2Model, ViT-L/16, last_hidden_state[:, 0]); "
            "eva pathology/owkin_phikon_v2",
        ),
        EncoderPreset(
            name="gigapath",
            arch="vit_giant_patch14_dinov2",
            kwargs={
                "img_size": 224,
                "in_chans": 3,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
                "dynamic_img_size": True,
            },
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            embedding="cls",
            layout="timm",
            source="hf prov-gigapath/prov-gigapath config.json model_args (tile encoder); "
            "github.com/prov-gigapath/prov-gigapath demo/3_load_tile_encoder.py (transform)",
        ),
    )
}


def list_encoders() -> list[str]:
    """Return the preset names, sorted (any `timm:<arch>` is accepted besides)."""
    return sorted(_PRESETS)


def encoder_preset(name: str) -> EncoderPreset:
    """Return the preset `name`, or a generic one for `timm:<arch>` (timm's pooling, ImageNet
    mean/std, timm's default input size); raises UnknownEncoderError naming close names."""
    if name in _PRESETS:
        return _PRESETS[name]
    if name.startswith(TIMM_PREFIX):
        return _timm_preset(name)
    close = difflib.get_close_matches(name, list(_PRESETS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownEncoderError(
        f"unknown encoder {name!r}{hint} (presets: {', '.join(list_encoders())}; or timm:<architecture>)"
    )


def _timm_preset(name: str) -> EncoderPreset:
    arch = name.removeprefix(TIMM_PREFIX)
    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise UnknownEncoderError(f"unknown encoder {name!r}: timm has no architecture {arch!r}{hint}")
    cfg = timm.get_pretrained_cfg(arch)
    size = cfg.input_size[-1] if cfg is not None else 224
    return EncoderPreset(
        name=name,
        arch=arch,
        kwargs={},
        input_size=size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        embedding="pooled",
        layout="timm",
        source=f"timm {timm.__version__} {arch} (default pretrained cfg for the input size)",
    )
