"""Every registered baseline builds by name, runs forward and backward, and has its published size."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import baselines
from baselines.maps import explanation_maps, grad_cam

# Small inputs that keep every forward/backward pass on CPU short.
SMALL_IMAGE = {"gusa": (64, 96), "attention_gate": (64, 96), "transfer": (64, 64), "idc_small": None, "probes": None}
# finetune's default encoder is a ViT-L: the same family with one narrow block here.
SMALL_OPTIONS = {"finetune": {"encoder_arch": {"depth": 1, "embed_dim": 32, "num_heads": 2}}}


@functools.cache
def _embedding_width() -> int:
    """The width of the probes' default encoder's embedding (built once, without weights)."""
    return baselines.encoders.encoder_dim("uni")


def _small_input(name: str, batch: int = 2) -> torch.Tensor:
    entry = baselines.info(name)
    if entry.input_kind == "bag":
        return torch.rand(batch, 400, 3, 28, 28)
    if entry.input_kind == "embedding":
        return torch.randn(batch, _embedding_width())
    size = SMALL_IMAGE[entry.family] or entry.input_size
    return torch.randn(batch, 3, *size)


@pytest.mark.parametrize("name", baselines.list())
def test_forward_backward_returns_the_promised_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = baselines.create(name, num_classes=3, **SMALL_OPTIONS.get(name, {}))
    if hasattr(model, "memorise"):  # the kNN probe votes among memorised embeddings and trains nothing
        model.memorise(_small_input(name, batch=8), torch.arange(8) % 3)
        assert model(_small_input(name))["logits"].shape == (2, 3)
        return
    out = model(_small_input(name))
    assert tuple(k for k in out if k != "penalty") == baselines.info(name).outputs
    assert out["logits"].shape == (2, 3) and torch.isfinite(out["logits"]).all()
    if "roi" in out:
        assert out["roi"].shape[:2] == (2, 1) and 0 <= out["roi"].min() and out["roi"].max() <= 1
    loss = out["logits"].sum() + (out["roi"].sum() if "roi" in out else 0)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


PUBLISHED_COUNTS = [
    # name, classes, options, torch count, (convention, count) reproducing the published row (BASELINES.md §5)
    ("cancernet", 2, {}, 1_233_533, ("keras", 1_235_133)),
    ("idc_cnn", 2, {"head": "sigmoid"}, 388_993, ("keras", 389_441)),
    ("vgg16", 2, {}, 134_268_738, None),
    ("resnet18", 2, {}, 11_177_538, None),
    ("densenet121", 2, {}, 6_955_906, None),
    ("densenet161", 2, {}, 26_476_418, None),
    ("efficientnetv2_s", 2, {}, 20_508_498, ("keras", 20_664_930)),
    ("gusa_baseline", 4, {}, 12_491_140, ("weights_only", 12_332_740)),
    ("gusa_fa", 4, {}, 6_802_052, ("keras", 6_878_788)),
    ("gusa_guroi", 4, {}, 6_407_813, ("keras", 6_483_013)),
    ("gusa", 4, {}, 6_407_813, ("keras", 6_483_013)),
    ("gusa_fa_guroi", 4, {}, 6_802_565, ("keras", 6_879_301)),
    ("gusa_fa_gusa", 4, {}, 6_802_565, ("keras", 6_879_301)),
    ("rga", 4, {}, 6_802_565, ("keras", 6_879_301)),
    ("attention_gate", 4, {}, 19_526_790, ("weights_only", 19_368_390)),
    ("amil", 2, {}, 492_329, None),
]


@pytest.mark.parametrize(
    ("name", "classes", "options", "torch_count", "convention"), PUBLISHED_COUNTS, ids=[r[0] for r in PUBLISHED_COUNTS]
)
def test_parameter_counts_match_baselines_md(
    name: str, classes: int, options: dict, torch_count: int, convention: tuple | None
) -> None:
    counts = baselines.param_counts(baselines.create(name, num_classes=classes, **options))
    assert counts["torch"] == torch_count
    if convention is not None:
        assert counts[convention[0]] == convention[1]


def test_counts_marked_reproduced_equal_the_published_ones() -> None:
    reproduced = [
        s for s in baselines.summarise_all() if s.published is not None and baselines.info(s.name).published.reproduced
    ]
    assert {s.name for s in reproduced} == {"gusa_baseline", "gusa_guroi", "gusa", "attention_gate", "idc_cnn"}
    assert all(s.count_in_published_convention == s.published for s in reproduced)


def test_amil_with_one_output_has_the_s000_count() -> None:
    assert baselines.param_counts(baselines.create("amil", num_classes=1))["torch"] == 491_828


def test_gusa_roi_map_has_the_bifurcation_resolution() -> None:
    # BASELINES.md §2.7 and §4.3: M x N = 24 x 32 for a 384 x 512 input.
    model = baselines.create("gusa", num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 384, 512))
    assert out["roi"].shape == (1, 1, 24, 32)


def test_attention_gate_maps_sum_to_one_at_two_scales() -> None:
    model = baselines.create("attention_gate", num_classes=4).eval()
    with torch.no_grad():
        a1, a2 = model(torch.randn(2, 3, 64, 96))["attention"]
    assert a1.shape == (2, 1, 4, 6) and a2.shape == (2, 1, 2, 3)
    for a in (a1, a2):
        assert torch.allclose(a.sum((1, 2, 3)), torch.ones(2), atol=1e-5) and (a >= 0).all()


@pytest.mark.parametrize("gated", [False, True])
def test_amil_attention_over_a_bag_sums_to_one(gated: bool) -> None:
    model = baselines.create("amil", num_classes=2, gated=gated).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 400, 3, 28, 28))
    assert out["attention"].shape == (3, 400)
    assert torch.allclose(out["attention"].sum(1), torch.ones(3), atol=1e-6)
    assert out["attention_map"].shape == (3, 1, 16, 25) and out["attention_map"].amax((1, 2, 3)).allclose(torch.ones(3))


def test_cancernet_accepts_48_and_50_pixel_input() -> None:
    model = baselines.create("cancernet", num_classes=2).eval()
    for size in (48, 50):
        assert model(torch.zeros(1, 3, size, size))["logits"].shape == (1, 2)


def test_idc_cnn_sigmoid_head_is_a_two_class_softmax() -> None:
    model = baselines.create("idc_cnn", num_classes=2, head="sigmoid").eval()
    logits = model(torch.randn(4, 3, 50, 50))["logits"]
    assert torch.allclose(logits[:, 0], torch.zeros(4))
    with pytest.raises(ValueError, match="binary head"):
        baselines.create("idc_cnn", num_classes=4, head="sigmoid")


def test_unknown_name_lists_close_names() -> None:
    with pytest.raises(baselines.UnknownBaselineError, match=r"did you mean resnet18, "):
        baselines.create("resnet19", num_classes=2)


def test_none_options_keep_defaults_and_unknown_options_fail() -> None:
    model = baselines.create("cancernet", num_classes=2, dropout_fc=None)
    assert model.classifier[4].p == 0.5
    with pytest.raises(TypeError, match=r"takes no option depth"):
        baselines.create("cancernet", num_classes=2, depth=3)


# BASELINES.md §0.5: the sources' frameworks; 001's Table I rows (GuSA family, AG, RGA) ran TensorFlow.
SOURCE_FRAMEWORKS = {
    "cancernet": "keras",
    "idc_cnn": "keras",
    "efficientnetv2_s": "keras",
    "attention_gate": "tensorflow",
    "gusa_baseline": "tensorflow",
    "gusa_fa": "tensorflow",
    "gusa_guroi": "tensorflow",
    "gusa_fa_guroi": "tensorflow",
    "gusa": "tensorflow",
    "gusa_fa_gusa": "tensorflow",
    "rga": "tensorflow",
    "vgg16": "pytorch",
    "resnet18": "pytorch",
    "densenet121": "pytorch",
    "densenet161": "pytorch",
    "densenet169": "pytorch",
    "amil": "pytorch",
    "linear_probe": "pytorch",
    "mlp_probe": "pytorch",
    "knn_probe": "pytorch",
    "finetune": "pytorch",
}


def test_every_baseline_declares_its_source_framework() -> None:
    assert {name: baselines.source_framework(name) for name in baselines.list()} == SOURCE_FRAMEWORKS
    assert baselines.uses_keras_semantics("cancernet", "source") and baselines.uses_keras_semantics("gusa", "source")
    assert not baselines.uses_keras_semantics("cancernet", "torch")
    assert not baselines.uses_keras_semantics("resnet18", "source")
    with pytest.raises(ValueError, match="semantics 'keras': expected source or torch"):
        baselines.uses_keras_semantics("cancernet", "keras")


def _bn_constants(module: torch.nn.Module) -> set[tuple[float, float]]:
    return {
        (m.eps, round(m.momentum, 6)) for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }


def test_keras_semantics_give_each_part_of_a_model_its_keras_constants() -> None:
    """GuSA (001, TensorFlow): Keras' DenseNet trunk (BN epsilon 1.001e-5), Keras' defaults on the
    layers 001 added (BN 1e-3 / 0.99; glorot_uniform, zero biases); a PyTorch source keeps PyTorch's."""
    torch.manual_seed(0)
    gusa = baselines.create("gusa", num_classes=4)
    assert _bn_constants(gusa.block3) == {(1.001e-5, 0.01)} and _bn_constants(gusa.bp) == {(1e-3, 0.01)}
    head = gusa.classifier.conv
    assert (
        head.weight.abs().max() <= (6 / (512 + 4)) ** 0.5 and not head.bias.any() and not gusa.roi_head.conv.bias.any()
    )
    plain = baselines.create("gusa", num_classes=4, semantics="torch")
    assert _bn_constants(plain) == {(1e-5, 0.1)} and plain.classifier.conv.bias.any()
    effnet = baselines.create("efficientnetv2_s", num_classes=2)
    assert _bn_constants(effnet.trunk) == {(1e-3, 0.1)} and _bn_constants(effnet.head) == {(1e-3, 0.01)}
    assert _bn_constants(baselines.create("resnet18", num_classes=2)) == {(1e-5, 0.1)}


def test_keras_semantics_keep_loaded_weights_and_freeze_batch_norm_as_keras(tmp_path: Path) -> None:
    """003 froze its backbone; Keras then runs the backbone's BN in inference mode, torch does not."""
    trunk = baselines.create("efficientnetv2_s", num_classes=2, semantics="torch").trunk.state_dict()
    weights = tmp_path / "effnet.pth"
    torch.save(trunk, weights)
    x = torch.randn(4, 3, 64, 64)
    for semantics, trunk_bn_updates in (("source", False), ("torch", True)):
        model = baselines.create(
            "efficientnetv2_s", num_classes=2, pretrained=str(weights), freeze="head_only", semantics=semantics
        ).train()
        head_before = model.head.norm.running_mean.clone()
        model(x)
        assert torch.equal(model.trunk.conv_stem.weight, trunk["conv_stem.weight"])
        assert (not torch.equal(model.trunk.bn1.running_mean, trunk["bn1.running_mean"])) == trunk_bn_updates
        assert not torch.equal(model.head.norm.running_mean, head_before)


def test_keras_dense_batch_norm_averages_the_biased_batch_variance() -> None:
    """CancerNet's Dense-layer BN: Keras moves its variance towards the biased batch variance."""
    model = baselines.create("cancernet", num_classes=2, dropout_conv=0.0, dropout_fc=0.0).train()
    bn, seen = model.classifier[3], []
    bn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    model(torch.rand(5, 3, 48, 48))
    expected = 0.99 + 0.01 * seen[0].var(0, unbiased=False)
    assert torch.allclose(bn.running_var, expected, rtol=1e-6, atol=1e-7)


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        baselines.register("cancernet", framework="keras", input_size=48)(lambda num_classes, pretrained=None: None)


def test_freezing_needs_weights() -> None:
    with pytest.raises(ValueError, match=r"freeze='head_only' needs pretrained weights"):
        baselines.create("resnet18", num_classes=2, freeze="head_only")


def test_frozen_backbone_gets_no_gradients(tmp_path: Path) -> None:
    weights = tmp_path / "effnet.pth"
    torch.save(baselines.create("efficientnetv2_s", num_classes=2).trunk.state_dict(), weights)
    model = baselines.create("efficientnetv2_s", num_classes=2, pretrained=str(weights), freeze="head_only")
    model(torch.randn(2, 3, 64, 64))["logits"].sum().backward()
    assert all(p.grad is None for p in model.trunk.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 331_010  # 003's head (BASELINES.md §2.6)


def test_local_weights_file_changes_the_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = baselines.create("resnet18", num_classes=2).eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(source.net.state_dict(), weights)
    torch.manual_seed(2)
    fresh = baselines.create("resnet18", num_classes=2).eval()
    loaded = baselines.create("resnet18", num_classes=2, pretrained=str(weights), freeze="head_only").eval()
    x = torch.randn(2, 3, 50, 50)
    assert not torch.allclose(fresh.forward_features(x), source.forward_features(x))
    assert torch.allclose(loaded.forward_features(x), source.forward_features(x))
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == ["net.fc.weight", "net.fc.bias"]


def test_own_models_load_their_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = baselines.create("cancernet", num_classes=2).eval()
    weights = tmp_path / "cancernet.pth"
    torch.save(source.state_dict(), weights)
    loaded = baselines.create("cancernet", num_classes=2, pretrained=str(weights)).eval()
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(loaded(x)["logits"], source(x)["logits"])


def test_wrong_weights_files_fail_with_one_clear_message(tmp_path: Path) -> None:
    resnet = tmp_path / "resnet18.pth"
    torch.save(baselines.create("resnet18", num_classes=2).net.state_dict(), resnet)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"resnet18.pth' does not fit cancernet: missing classifier\.1\.bias"):
        baselines.create("cancernet", num_classes=2, pretrained=str(resnet))
    with pytest.raises(ValueError, match=r"resnet18.pth' does not fit densenet121.tv_in1k"):
        baselines.create("densenet121", num_classes=2, pretrained=str(resnet))
    with pytest.raises(ValueError, match=r"garbage.pth' is not a torch state dict"):
        baselines.create("amil", num_classes=2, pretrained=str(garbage))
    with pytest.raises(baselines.WeightsFileError, match=r"'/nowhere/w.pth' does not exist"):
        baselines.create("resnet18", num_classes=2, pretrained="/nowhere/w.pth")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("cancernet", "gradcam"),
        ("gusa_fa", "gradcam"),
        ("gusa", "roi"),
        ("attention_gate", "attention"),
        ("amil", "attention"),
    ],
)
def test_every_model_has_an_explanation_map_in_unit_range(name: str, kind: str) -> None:
    found, maps = explanation_maps(baselines.create(name, num_classes=2), _small_input(name))
    assert found == kind
    assert maps.shape[:2] == (2, 1) and maps.min() >= 0 and maps.max() <= 1


def test_grad_cam_follows_the_class_evidence() -> None:
    # A model whose class-1 logit is the mean of feature channel 0: Grad-CAM for class 1 is that channel.
    class Probe(torch.nn.Module):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def forward_head(self, f: torch.Tensor) -> torch.Tensor:
            return torch.stack([f[:, 1].mean((1, 2)), f[:, 0].mean((1, 2))], 1)

    features = torch.zeros(1, 2, 4, 4)
    features[0, 0, 1, 2] = 5.0
    cam = grad_cam(Probe(), features, classes=torch.tensor([1]))
    assert cam[0, 0, 1, 2] == 1.0 and cam.sum() == 1.0
