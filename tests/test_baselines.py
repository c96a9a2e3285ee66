"""Every registered baseline builds by name, runs forward and backward, and has its published size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import baselines


@pytest.mark.parametrize("name", baselines.list())
def test_forward_backward_returns_logits(name: str) -> None:
    torch.manual_seed(0)
    model = baselines.create(name, num_classes=3)
    size = baselines.info(name).input_size
    out = model(torch.randn(4, 3, size, size))
    assert set(out) >= {"logits"}
    assert out["logits"].shape == (4, 3)
    out["logits"].sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_cancernet_parameter_counts_match_baselines_md() -> None:
    # BASELINES.md §2.1 and §5: torch 1,233,533; keras 1,235,133; weights-only 1,231,933.
    counts = baselines.param_counts(baselines.create("cancernet", num_classes=2))
    assert counts == {"torch": 1_233_533, "keras": 1_235_133, "weights_only": 1_231_933}


def test_resnet18_torch_count_with_two_classes() -> None:
    # BASELINES.md §2.4: torch 11,177,538 with a 2-class head.
    assert baselines.param_counts(baselines.create("resnet18", num_classes=2))["torch"] == 11_177_538


def test_cancernet_accepts_48_and_50_pixel_input() -> None:
    model = baselines.create("cancernet", num_classes=2).eval()
    for size in (48, 50):
        assert model(torch.zeros(1, 3, size, size))["logits"].shape == (1, 2)


def test_unknown_name_lists_close_names() -> None:
    with pytest.raises(baselines.UnknownBaselineError, match=r"did you mean resnet18\?"):
        baselines.create("resnet19", num_classes=2)


def test_none_options_keep_defaults_and_unknown_options_fail() -> None:
    model = baselines.create("cancernet", num_classes=2, dropout_fc=None)
    assert model.net.classifier[4].p == 0.5
    with pytest.raises(TypeError, match=r"takes no option depth"):
        baselines.create("cancernet", num_classes=2, depth=3)


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        baselines.register("cancernet", input_size=48)(lambda num_classes, pretrained=None: None)


def test_freezing_needs_weights() -> None:
    with pytest.raises(ValueError, match=r"freeze='head_only' needs pretrained weights"):
        baselines.create("resnet18", num_classes=2, freeze="head_only")


def test_local_weights_file_is_loaded_and_a_missing_one_is_named(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = baselines.create("resnet18", num_classes=2)
    weights = tmp_path / "resnet18.pth"
    torch.save(source.net.state_dict(), weights)
    loaded = baselines.create("resnet18", num_classes=2, pretrained=str(weights), freeze="head_only").eval()
    x = torch.randn(2, 3, 50, 50)
    assert torch.allclose(loaded.net.forward_features(x), source.eval().net.forward_features(x))
    trainable = [n for n, p in loaded.named_parameters() if p.requires_grad]
    assert trainable == ["net.fc.weight", "net.fc.bias"]
    with pytest.raises(FileNotFoundError, match=r"'/nowhere/w.pth' does not exist"):
        baselines.create("resnet18", num_classes=2, pretrained="/nowhere/w.pth")
