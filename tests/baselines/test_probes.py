"""The probe heads and the fine-tune model of baselines/probes.py, on a tiny timm ViT standing in
for a foundation-model encoder."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import timm
import torch
from torch import nn

import baselines
from baselines import probes
from harness.config import TrainParams, load_search_space, split_point
from harness.optim import build_optimizer

DEPTH, WIDTH = 3, 32


class TinyEncoder(nn.Module):
    """A 3-block, 32-wide timm ViT with the Encoder interface probes.py uses (dim, forward, blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = timm.create_model(
            "vit_tiny_patch16_224", num_classes=0, depth=DEPTH, embed_dim=WIDTH, num_heads=2, img_size=32
        )
        self.dim = WIDTH

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def blocks(self) -> list[nn.Module]:
        return list(self.net.blocks)


@pytest.fixture
def tiny_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe builds its encoder, or reads its width, from TinyEncoder."""
    monkeypatch.setattr(probes, "create_encoder", lambda name, weights, **arch: TinyEncoder())
    monkeypatch.setattr(probes, "encoder_dim", lambda name, **arch: WIDTH)


@pytest.mark.parametrize(("name", "options"), [("linear_probe", {}), ("mlp_probe", {"hidden": 8, "dropout": 0.5})])
def test_a_head_maps_embeddings_to_logits(tiny_encoder: None, name: str, options: dict[str, Any]) -> None:
    head = baselines.create(name, num_classes=4, **options)
    out = head(torch.randn(5, WIDTH, dtype=torch.float16))
    assert list(out) == ["logits"] and out["logits"].shape == (5, 4) and out["logits"].dtype == torch.float32


def test_the_mlp_head_is_evas_one_hidden_layer_mlp(tiny_encoder: None) -> None:
    head = baselines.create("mlp_probe", num_classes=4, hidden=8, dropout=0.25)
    layers = list(head.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[2].p, layers[3].out_features) == (WIDTH, 8, 0.25, 4)


def _brute_force_knn(
    memory: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int, distance: str, weighting: str, classes: int
) -> np.ndarray:
    """Vote shares of the k nearest rows of `memory` for each query, by the definition."""
    if distance == "cosine":
        unit = memory / np.linalg.norm(memory, axis=1, keepdims=True)
        dist = 1 - (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    else:
        dist = np.sqrt(((queries[:, None, :] - memory[None, :, :]) ** 2).sum(-1))
    shares = np.zeros((len(queries), classes))
    for i, row in enumerate(dist):
        nearest = np.argsort(row)[:k]
        weights = np.ones(k) if weighting == "uniform" else 1 / (row[nearest] + 1e-8)
        np.add.at(shares[i], labels[nearest], weights)
    return shares / shares.sum(1, keepdims=True)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("weighting", ["uniform", "distance"])
def test_knn_votes_as_a_brute_force_knn(
    tiny_encoder: None, monkeypatch: pytest.MonkeyPatch, distance: str, weighting: str
) -> None:
    # Memory scanned in chunks of 7 rows: the running top-k across chunks is what is checked.
    monkeypatch.setattr(probes, "_KNN_CHUNK", 7)
    rng = np.random.default_rng(0)
    memory, queries = rng.normal(size=(40, WIDTH)), rng.normal(size=(9, WIDTH))
    labels = rng.integers(0, 3, 40)
    head = baselines.create("knn_probe", num_classes=3, k=5, distance=distance, weighting=weighting).eval()
    head.memorise(torch.tensor(memory, dtype=torch.float32), torch.tensor(labels))
    with torch.no_grad():
        logits = head(torch.tensor(queries, dtype=torch.float32))["logits"]
    expected = _brute_force_knn(memory, labels, queries, 5, distance, weighting, 3)
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), expected, atol=1e-3)
    assert logits.argmax(1).tolist() == expected.argmax(1).tolist()


def test_knn_has_no_parameters_and_its_memory_travels_in_its_state(tiny_encoder: None) -> None:
    head = baselines.create("knn_probe", num_classes=2, k=3)
    assert not list(head.parameters())
    with pytest.raises(RuntimeError, match="call memorise"):
        head(torch.randn(1, WIDTH))
    head.memorise(torch.randn(6, WIDTH, dtype=torch.float16), torch.tensor([0, 1, 0, 1, 1, 1]))
    fresh = baselines.create("knn_probe", num_classes=2, k=3)
    fresh.load_state_dict(head.state_dict())
    queries = torch.randn(4, WIDTH)
    assert torch.equal(fresh(queries)["logits"], head(queries)["logits"])
    assert fresh.memory.dtype == torch.float16


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_knn_exports_as_a_program_whose_batch_size_stays_free(tiny_encoder: None, distance: str) -> None:
    # A fold's network is served as a torch.export program traced on two examples.
    head = baselines.create("knn_probe", num_classes=3, k=4, distance=distance).eval()
    head.memorise(torch.randn(40, WIDTH), torch.arange(40) % 3)
    program = torch.export.export(head, (torch.randn(2, WIDTH),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    queries = torch.randn(30, WIDTH)
    assert torch.allclose(program.module()(queries)["logits"], head(queries)["logits"])


def test_knn_refuses_unknown_options(tiny_encoder: None) -> None:
    with pytest.raises(ValueError, match="expected distance cosine or euclidean"):
        baselines.create("knn_probe", num_classes=2, distance="manhattan")
    with pytest.raises(ValueError, match="k=0: expected at least 1"):
        baselines.create("knn_probe", num_classes=2, k=0)


def test_finetune_maps_images_to_logits(tiny_encoder: None) -> None:
    model = baselines.create("finetune", num_classes=3)
    out = model(torch.rand(2, 3, 32, 32))
    assert list(out) == ["logits"] and out["logits"].shape == (2, 3)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("blocks", [1, 2])
def test_finetune_trains_only_the_last_blocks_their_norm_and_the_head(tiny_encoder: None, blocks: int) -> None:
    model = baselines.create("finetune", num_classes=3, blocks=blocks)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    last = {f"blocks.{i}." for i in range(DEPTH - blocks, DEPTH)}
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith("head.") or n.startswith("encoder.net.norm.") or any(b in n for b in last)
    }
    assert trainable == expected
    model(torch.rand(2, 3, 32, 32))["logits"].sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())


def test_finetune_refuses_more_blocks_than_the_encoder_has(tiny_encoder: None) -> None:
    with pytest.raises(ValueError, match=r"blocks=4: expected 0 \(all\) to the encoder's depth 3"):
        baselines.create("finetune", num_classes=3, blocks=4)


def test_layer_decay_gives_block_i_lr_times_decay_to_the_depth_minus_i(tiny_encoder: None) -> None:
    model = baselines.create("finetune", num_classes=3, layer_decay=0.5)
    groups = model.param_groups(1.0)
    encoder = model.encoder
    lrs = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lrs[id(encoder.net.patch_embed.proj.weight)] == lrs[id(encoder.net.cls_token)] == 0.5 ** (DEPTH + 1)
    for i, block in enumerate(encoder.blocks()):
        assert {lrs[id(p)] for p in block.parameters()} == {0.5 ** (DEPTH - i)}
    assert {lrs[id(p)] for p in [*encoder.net.norm.parameters(), *model.head.parameters()]} == {1.0}
    assert len(lrs) == len(list(model.parameters()))


def test_layer_decay_groups_hold_only_the_trainable_parameters(tiny_encoder: None) -> None:
    model = baselines.create("finetune", num_classes=3, blocks=1, layer_decay=0.5)
    groups = model.param_groups(2.0)
    assert [g["lr"] for g in groups] == [1.0, 2.0]
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_build_optimizer_takes_the_models_groups_with_the_runs_weight_decay(tiny_encoder: None, optimizer: str) -> None:
    model = baselines.create("finetune", num_classes=3, layer_decay=0.5)
    built = build_optimizer(TrainParams(optimizer=optimizer, lr=0.1, weight_decay=0.01), model, keras=False)
    assert [g["lr"] for g in built.param_groups] == [0.1 * 0.5 ** (DEPTH + 1 - i) for i in range(DEPTH + 2)]
    assert {g["weight_decay"] for g in built.param_groups} == {0.01}
    plain = build_optimizer(TrainParams(lr=0.1), baselines.create("linear_probe", num_classes=3), keras=False)
    assert [g["lr"] for g in plain.param_groups] == [0.1]


def test_a_keras_optimizer_takes_the_models_groups_too(tiny_encoder: None) -> None:
    model = baselines.create("finetune", num_classes=3, blocks=2, layer_decay=0.5)
    built = build_optimizer(TrainParams(optimizer="adam", lr=0.1), model, keras=True)
    assert [g["lr"] for g in built.param_groups] == [0.025, 0.05, 0.1]


@pytest.mark.parametrize("name", ["linear_probe", "mlp_probe", "knn_probe", "finetune"])
def test_the_search_spaces_load_with_evas_or_the_stated_recipe(name: str) -> None:
    space = load_search_space(name)
    params, options = split_point({**space.recipe, **space.fixed})
    assert options["encoder"] == "uni" and params.normalisation == "unit" and params.augment == "none"
    assert all(d.contains(space.recipe[k]) for k, d in space.search.items() if k in space.recipe)
    if name == "knn_probe":
        assert params.epochs_max == 1 and space.resources.gpu == 0.1
    elif name == "finetune":
        assert params.input_size == 224 and space.resources.gpu == 1
    else:
        assert (params.optimizer, params.lr, params.batch_size) == ("adamw", 3e-4, 256)
        assert space.resources.gpu == 0.1
