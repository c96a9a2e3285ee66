"""Losses of BASELINES.md §2.10 and §2.13, read from a model's output dict."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.losses import build_loss, dice_loss, guidance_loss, keras_crossentropy, roi_target


def _mask() -> torch.Tensor:
    mask = torch.zeros(2, 1, 24, 32)
    mask[:, :, 4:12, 8:20] = 1
    return mask


def test_dice_is_zero_for_a_perfect_map_and_grows_as_it_goes_wrong() -> None:
    mask = _mask()
    assert dice_loss(mask, mask).item() == pytest.approx(0.0, abs=1e-7)
    shifted = torch.roll(mask, shifts=4, dims=3)
    wrong = 1 - mask
    assert 0 < dice_loss(shifted, mask) < dice_loss(wrong, mask)
    assert dice_loss(wrong, mask).item() == pytest.approx(1 - 1 / (96 + 672 + 1), rel=1e-6)


def test_roi_target_is_the_area_average_binarised_at_half() -> None:
    full = torch.zeros(1, 1, 384, 512)
    full[..., :16, :8] = 1  # half of the top-left 16 x 16 cell
    full[..., 16:32, :12] = 1  # three quarters of the cell below
    soft = roi_target(full, (24, 32), "soft")
    assert soft[0, 0, 0, 0] == 0.5 and soft[0, 0, 1, 0] == 0.75
    hard = roi_target(full, (24, 32), "hard")
    assert hard[0, 0, 0, 0] == 1 and hard[0, 0, 1, 0] == 1 and hard.sum() == 2


def test_guidance_penalises_activation_outside_the_roi_only() -> None:
    mask = _mask()
    assert guidance_loss(mask * 0.9, mask).item() == pytest.approx(0.0, abs=1e-6)
    outside = torch.full_like(mask, 0.5)
    assert guidance_loss(outside, mask).item() == pytest.approx(-torch.log(torch.tensor(0.5)).item(), rel=1e-6)


def test_built_losses_add_roi_terms_and_penalties() -> None:
    labels = torch.tensor([0, 1])
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    mask = torch.zeros(2, 1, 96, 128)
    mask[..., :48, :] = 1
    perfect = {"logits": logits, "roi": roi_target(mask, (6, 8))}
    assert build_loss("ce")(perfect, labels, None).item() == pytest.approx(ce.item())
    assert build_loss("ce_dice")(perfect, labels, mask).item() == pytest.approx(ce.item(), abs=1e-6)
    wrong = {"logits": logits, "roi": 1 - perfect["roi"]}
    assert build_loss("ce_dice", lambda_roi=2.0)(wrong, labels, mask) > build_loss("ce_dice")(wrong, labels, mask)
    assert build_loss("ce")({"logits": logits, "penalty": torch.tensor(0.25)}, labels, None).item() == pytest.approx(
        ce.item() + 0.25
    )
    with pytest.raises(ValueError, match="needs an RoI mask per image"):
        build_loss("ce_dice")(perfect, labels, None)


def test_keras_loss_weights_samples_and_divides_by_the_batch_size() -> None:
    logits = torch.tensor([[1.0, -1.0], [0.5, 0.0], [-2.0, 1.0], [0.0, 0.3]])
    labels = torch.tensor([0, 1, 1, 0])
    weights = torch.tensor([1.0, 2.5])
    per_sample = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    # Keras' class_weight: sum of weighted losses over the batch size; PyTorch's: over the sum of weights.
    expected = (per_sample * weights[labels]).sum() / 4
    assert build_loss("ce", class_weights=weights, keras=True)(
        {"logits": logits}, labels, None
    ).item() == pytest.approx(expected.item(), rel=1e-6)
    assert build_loss("ce", class_weights=weights)({"logits": logits}, labels, None).item() == pytest.approx(
        ((per_sample * weights[labels]).sum() / weights[labels].sum()).item(), rel=1e-6
    )


def test_keras_loss_clips_probabilities_at_1e_7() -> None:
    logits = torch.tensor([[0.0, 60.0]], requires_grad=True)
    loss = keras_crossentropy(logits, torch.tensor([0]))
    # Both units are clipped: -log(1e-7) and -log(1 - (1 - 1e-7)) in float32; no gradient flows.
    assert loss.item() == pytest.approx((-math.log(1e-7) - math.log(1 - float(torch.tensor(1 - 1e-7)))) / 2, rel=1e-5)
    assert 15.9 < loss.item() < 16.2
    loss.backward()
    assert logits.grad.abs().max().item() == 0.0
    # PyTorch's cross-entropy on logits has no cap: 60 nats.
    assert torch.nn.functional.cross_entropy(logits.detach(), torch.tensor([0])).item() == pytest.approx(60.0, rel=1e-4)
