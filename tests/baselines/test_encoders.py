"""Foundation-model encoders: each preset's published key layout round-trips through a tiny random
encoder of its family, the embedding kinds have their widths, wrong and missing files fail in one
line, and the full-size recipes have the published sizes (on the meta device, no memory)."""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from baselines import WeightsFileError
from baselines.encoders import (
    Encoder,
    UnknownEncoderError,
    create_encoder,
    encoder_dim,
    encoder_preset,
    list_encoders,
    weights_digest,
    write_random_encoder,
)

# A few blocks of small width: every preset's family builds and runs on CPU in milliseconds.
TINY: dict[str, Any] = {"depth": 2, "embed_dim": 48, "num_heads": 2, "img_size": 32, "patch_size": 16}
SUFFIXES = (".safetensors", ".bin", ".pth")


def _random_twin(name: str, seed: int) -> Encoder:
    # write_random_encoder draws the trunk's initial weights from torch's generator under `seed`.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_encoder(name, None, **TINY)


# Each preset in one of the three file formats, in turn: every format and every layout is read.
@pytest.mark.parametrize(("name", "suffix"), zip(list_encoders(), itertools.cycle(SUFFIXES), strict=False))
def test_preset_round_trips_through_its_published_layout(name: str, suffix: str, tmp_path: Path) -> None:
    path = write_random_encoder(name, tmp_path / f"{name}{suffix}", seed=7, **TINY)
    images = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        loaded, random = create_encoder(name, path, **TINY)(images), _random_twin(name, 7)(images)
    assert loaded.shape == (3, encoder_dim(name, **TINY)) and torch.isfinite(loaded).all()
    assert torch.equal(loaded, random)


@pytest.mark.parametrize(
    ("name", "first_key"),
    [("phikon", "embeddings.cls_token"), ("phikon_v2", "embeddings.cls_token"), ("uni", "blocks.0.attn.proj.bias")],
)
def test_written_file_uses_the_published_key_names(name: str, first_key: str, tmp_path: Path) -> None:
    keys = set(load_file(write_random_encoder(name, tmp_path / "w.safetensors", **TINY)))
    assert first_key in keys
    if encoder_preset(name).layout != "timm":
        # transformers keeps q, k and v apart; timm fuses them.
        assert "encoder.layer.1.attention.attention.value.weight" in keys
        assert not any("qkv" in key for key in keys)
    if name == "phikon_v2":
        assert "embeddings.mask_token" in keys and "encoder.layer.0.layer_scale1.lambda1" in keys


def test_unused_published_tensors_and_a_wrapper_prefix_are_dropped_by_name(tmp_path: Path) -> None:
    path = write_random_encoder("phikon", tmp_path / "phikon.safetensors", seed=1, **TINY)
    state = load_file(path)
    # ViTModel's pooler, saved by a DistributedDataParallel wrapper: every key under "module.".
    state.update({"pooler.dense.weight": torch.zeros(48, 48), "pooler.dense.bias": torch.zeros(48)})
    save_file({f"module.{key}": value for key, value in state.items()}, tmp_path / "wrapped.safetensors")
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            create_encoder("phikon", tmp_path / "wrapped.safetensors", **TINY)(images),
            _random_twin("phikon", 1)(images),
        )


@pytest.mark.parametrize(("kind", "width"), [("cls", 48), ("mean", 48), ("cls+mean", 96), ("pooled", 48)])
def test_each_embedding_kind_has_its_width(kind: str, width: int) -> None:
    trunk = create_encoder("virchow2", None, **TINY).trunk
    encoder = Encoder(replace(encoder_preset("virchow2"), embedding=kind, input_size=32), trunk)
    with torch.no_grad():
        assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, width) == (2, encoder.dim)


def test_mean_is_over_patch_tokens_only() -> None:
    encoder = create_encoder("virchow2", None, **TINY)  # [CLS, 4 registers, 4 patches]
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = encoder.trunk.forward_features((images - encoder.mean) / encoder.std)
        embedding = encoder(images)
    assert encoder.trunk.num_prefix_tokens == 5 and tokens.shape[1] == 9
    assert torch.allclose(embedding[:, :48], tokens[:, 0])
    assert torch.allclose(embedding[:, 48:], tokens[:, 5:].mean(dim=1))
    assert not torch.allclose(embedding[:, 48:], tokens[:, 1:].mean(dim=1))


def test_images_are_resized_only_when_their_size_differs() -> None:
    encoder = create_encoder("uni", None, **TINY)
    images = torch.rand(1, 3, 64, 64)
    resized = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        assert torch.allclose(encoder(images), encoder(resized), atol=1e-6)
    assert encoder.preset.input_size == 32  # an img_size override is the encoder's input size


def test_another_presets_file_fails_in_one_line_naming_file_and_keys(tmp_path: Path) -> None:
    path = write_random_encoder("uni", tmp_path / "uni.safetensors", **TINY)
    with pytest.raises(WeightsFileError) as error:
        create_encoder("phikon", path, **TINY)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    # Named as the files name them: the expected phikon key, and the uni key it found instead.
    assert "missing embeddings.cls_token" in message and "unexpected blocks.0.attn.proj.bias" in message


def test_registers_of_another_family_are_named(tmp_path: Path) -> None:
    path = write_random_encoder("uni2_h", tmp_path / "uni2_h.bin", **TINY)
    with pytest.raises(WeightsFileError, match=r"does not fit encoder 'uni' \(timm layout\): unexpected reg_token"):
        create_encoder("uni", path, **TINY)


def test_a_file_of_another_width_names_the_tensor(tmp_path: Path) -> None:
    path = write_random_encoder("uni", tmp_path / "uni.pth", **TINY)
    with pytest.raises(WeightsFileError, match="size mismatch for cls_token"):
        create_encoder("uni", path, **{**TINY, "embed_dim": 64})


def test_a_missing_file_names_the_path_and_says_weights_are_never_downloaded(tmp_path: Path) -> None:
    missing = tmp_path / "UNI" / "pytorch_model.bin"
    with pytest.raises(WeightsFileError, match=r"pytorch_model\.bin.*weights are never downloaded"):
        create_encoder("uni", missing, **TINY)


def test_a_timm_architecture_is_an_encoder_by_name() -> None:
    preset = encoder_preset("timm:resnet18")
    assert (preset.arch, preset.embedding, preset.layout, preset.input_size) == ("resnet18", "pooled", "timm", 224)
    encoder = create_encoder("timm:resnet18", None)
    with torch.no_grad():
        assert encoder(torch.rand(2, 3, 48, 48)).shape == (2, 512) == (2, encoder.dim)
    assert len(encoder.blocks()) == 4
    vit = create_encoder("timm:vit_tiny_patch16_224", None, depth=3, img_size=32)
    assert len(vit.blocks()) == 3 and vit.dim == 192


@pytest.mark.parametrize(
    ("name", "close"),
    [("uni2h", "uni2_h"), ("virchow", "virchow2"), ("timm:vit_smal_patch16_224", "timm:vit_small_patch16_224")],
)
def test_an_unknown_name_lists_close_names(name: str, close: str) -> None:
    with pytest.raises(UnknownEncoderError, match=close):
        encoder_preset(name)


def test_encoder_dim_matches_the_built_encoder_without_allocating() -> None:
    for name in list_encoders():
        assert encoder_dim(name, **TINY) == create_encoder(name, None, **TINY).dim


# Published sizes: (embedding width, parameters in millions as the source prints them).
PUBLISHED = {
    "uni": (1024, 303, "UNI paper: ViT-L/16, 0.3B"),
    "uni2_h": (1536, 681, "hf MahmoodLab/UNI2-h: ViT-h/14-reg8, 681M"),
    "virchow2": (2560, 632, "Virchow2 paper (arXiv 2408.00738): 632M; card: 1 x 2560 embedding"),
    "h_optimus_0": (1536, 1100, "bioptimus/releases h-optimus v0: g/14, 1536; 1.1B"),
    "h_optimus_1": (1536, 1100, "H-optimus-1 announcement: 1.1B"),
    "phikon": (768, 86, "Phikon: ViT-B/16, 86M"),
    "phikon_v2": (1024, 300, "Phikon-v2: ViT-L/16, 300M"),
    "gigapath": (1536, 1130, "Prov-GigaPath paper: tile encoder 1.13B, 1536"),
}


@pytest.mark.parametrize("name", list_encoders())
def test_full_size_recipe_has_the_published_width_and_size(name: str) -> None:
    width, millions, _ = PUBLISHED[name]
    with torch.device("meta"):
        trunk = create_encoder(name, None).trunk
    params = sum(p.numel() for p in trunk.parameters())
    assert encoder_dim(name) == width
    assert abs(params / 1e6 - millions) / millions < 0.04, params


def test_weights_digest_is_the_files_sha256_and_follows_a_rewrite(tmp_path: Path) -> None:
    path = write_random_encoder("uni", tmp_path / "uni.safetensors", seed=0, **TINY)
    assert weights_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest() == weights_digest(str(path))
    write_random_encoder("uni", path, seed=1, **TINY)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert weights_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_blocks_are_the_transformer_blocks_input_side_first() -> None:
    encoder = create_encoder("uni", None, **TINY)
    assert encoder.blocks() == [encoder.trunk.blocks[0], encoder.trunk.blocks[1]]


def test_a_digest_is_kept_per_machine_for_every_process_and_follows_a_rewrite(tmp_path: Path) -> None:
    from baselines.encoders import _build

    path = write_random_encoder("uni", tmp_path / "uni.bin", seed=0, **TINY)
    digest = weights_digest(path)
    [memo] = [m for m in (Path(os.environ[_build.CACHE_ENV]) / "weights-sha256").iterdir() if m.read_text() == digest]
    # Another process finds it there (this one's memory forgotten): the memo is what it reads.
    _build._digest.cache_clear()
    memo.write_text("f" * 64)
    assert weights_digest(path) == "f" * 64
    memo.write_text(digest)
    # A rewritten file is another file: hashed again.
    write_random_encoder("uni", path, seed=1, **TINY)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert weights_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest() != digest


def test_an_encoder_by_recipe_sets_its_input_size_normalisation_and_embedding() -> None:
    from baselines.encoders import resolved_preset

    recipe = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32}
    recipe |= {"embedding": "cls+mean", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    preset = resolved_preset("timm:vit_tiny_patch16_224", **recipe)
    assert (preset.input_size, preset.mean, preset.std, preset.embedding) == (32, (0.5,) * 3, (0.25,) * 3, "cls+mean")
    assert "embedding" not in preset.kwargs and preset.kwargs["depth"] == 1
    encoder = create_encoder("timm:vit_tiny_patch16_224", None, **recipe)
    assert encoder.dim == 64 == encoder_dim("timm:vit_tiny_patch16_224", **recipe)
    images = torch.rand(2, 3, 32, 32)
    tokens = encoder.trunk.forward_features((images - 0.5) / 0.25)
    expected = torch.cat([tokens[:, 0], tokens[:, encoder.trunk.num_prefix_tokens :].mean(1)], -1)
    torch.testing.assert_close(encoder(images), expected)
    with pytest.raises(ValueError, match=r"^encoder 'uni': embedding must be one of cls, mean, cls\+mean, pooled"):
        resolved_preset("uni", embedding="max")
