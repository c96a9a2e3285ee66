"""Training under Keras semantics against Keras itself (BASELINES.md §0.5): optimiser steps, the
time-based decay, the clipped and class-weighted loss, flow_from_directory's resize and
ImageDataGenerator's transforms. Keras 3 runs on its torch backend (a test dependency only), whose
optimisers are foreach versions of the same update rules the TensorFlow backend runs."""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"

from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.losses import keras_crossentropy
from harness.config import TrainParams
from harness.data.augmentations import augmentation
from harness.data.transforms import KerasImageDataGenerator, build_transform, keras_affine
from harness.optim import KerasAdagrad, KerasAdam, KerasAdamax, KerasSGD, build_optimizer, step_schedule

keras = pytest.importorskip("keras", reason="keras 3 (test dependency) is not installed")
legacy_image = pytest.importorskip("keras.src.legacy.preprocessing.image")

LR = 0.01
OPTIMISERS = {
    # name: (Keras' optimiser for a learning rate or schedule, ours, PyTorch's of the same name or None)
    "adagrad": (keras.optimizers.Adagrad, lambda p: KerasAdagrad(p, LR), lambda p: torch.optim.Adagrad(p, LR)),
    "adam": (keras.optimizers.Adam, lambda p: KerasAdam(p, LR), lambda p: torch.optim.Adam(p, LR)),
    "adamax": (keras.optimizers.Adamax, lambda p: KerasAdamax(p, LR), lambda p: torch.optim.Adamax(p, LR)),
    "sgd_momentum": (lambda lr: keras.optimizers.SGD(lr, momentum=0.9), lambda p: KerasSGD(p, LR, momentum=0.9), None),
    "adamw": (
        lambda lr: keras.optimizers.AdamW(lr, weight_decay=0.1),
        lambda p: KerasAdam(p, LR, weight_decay=0.1, decoupled=True),
        None,
    ),
}


def _run(make, weights: np.ndarray, grads: list[np.ndarray], schedule=None) -> list[np.ndarray]:
    """Weights after each step of a torch optimiser (with an optional LambdaLR multiplier)."""
    param = torch.nn.Parameter(torch.tensor(weights))
    optimizer = make([param])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule) if schedule else None
    out = []
    for grad in grads:
        param.grad = torch.tensor(grad)
        optimizer.step()
        if scheduler:
            scheduler.step()
        out.append(param.detach().numpy().copy())
    return out


def _run_keras(optimizer, weights: np.ndarray, grads: list[np.ndarray]) -> list[np.ndarray]:
    variable = keras.Variable(weights.copy())
    out = []
    for grad in grads:
        optimizer.apply([torch.tensor(grad)], [variable])
        out.append(keras.ops.convert_to_numpy(variable).copy())
    return out


def _state(steps: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    # Gradient magnitudes from 1e-7 to 1, so that where epsilon enters shows in the small ones.
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-7, 0, size)
    return rng.normal(size=size).astype(np.float32), [
        (rng.normal(size=size) * scale).astype(np.float32) for _ in range(steps)
    ]


@pytest.mark.parametrize("name", OPTIMISERS)
def test_each_optimiser_step_agrees_with_keras(name: str) -> None:
    keras_make, ours, torch_make = OPTIMISERS[name]
    weights, grads = _state(5)
    expected = _run_keras(keras_make(LR), weights, grads)
    got = _run(ours, weights, grads)
    diffs = [np.abs(e - g).max() for e, g in zip(expected, got)]
    assert max(diffs) <= 1e-6, diffs
    assert np.abs(expected[-1] - weights).max() > 1e-2  # the steps moved the weights
    if torch_make is not None:
        # PyTorch's optimiser of the same name is a different rule: the check can tell them apart.
        assert np.abs(_run(torch_make, weights, grads)[0] - expected[0]).max() > 1e-4


def test_time_based_decay_is_keras_inverse_time_decay_over_10000_steps() -> None:
    epochs, steps = 40, 10_000
    params = TrainParams(optimizer="adagrad", lr=LR, lr_decay="keras_time_based")
    optimizer = KerasAdagrad([torch.nn.Parameter(torch.zeros(1))], LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, step_schedule(params, epochs))
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # Keras' legacy `decay=lr/epochs` is InverseTimeDecay(lr0, decay_steps=1, decay_rate=decay),
    # evaluated at the optimiser's iterations before each update.
    schedule = keras.optimizers.schedules.InverseTimeDecay(LR, decay_steps=1, decay_rate=LR / epochs)
    expected = keras.ops.convert_to_numpy(schedule(keras.ops.arange(steps, dtype="float32")))
    # Keras evaluates the schedule in float32: agreement to float32 rounding at every step.
    np.testing.assert_allclose(np.array(used), expected, rtol=2.5e-7, atol=0)
    assert used[-1] == pytest.approx(LR / (1 + LR / epochs * (steps - 1)))


@pytest.mark.parametrize("name", ["adagrad", "sgd_momentum"])
def test_decayed_training_follows_keras_step_for_step(name: str) -> None:
    # Under a changing lr Keras' SGD velocity (in lr units) differs from PyTorch's gradient buffer.
    keras_make, ours, _ = OPTIMISERS[name]
    decay = 0.05
    weights, grads = _state(60, size=32, seed=1)
    schedule = keras.optimizers.schedules.InverseTimeDecay(LR, decay_steps=1, decay_rate=decay)
    expected = _run_keras(keras_make(schedule), weights, grads)
    got = _run(ours, weights, grads, schedule=lambda step: 1.0 / (1.0 + decay * step))
    assert max(np.abs(e - g).max() for e, g in zip(expected, got)) <= 1e-6
    if name == "sgd_momentum":
        torch_sgd = _run(
            lambda p: torch.optim.SGD(p, LR, momentum=0.9),
            weights,
            grads,
            schedule=lambda step: 1.0 / (1.0 + decay * step),
        )
        assert np.abs(torch_sgd[-1] - expected[-1]).max() > 1e-4


def _logits_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    # Includes saturated rows (|difference| 30 and 40), where Keras' clipping decides the value.
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-30.0, 0.0], [0.0, 40.0], [1.5, 1.0], [-0.7, 2.2]])
    return logits, torch.tensor([0, 1, 0, 1, 1, 0])


def test_clipped_class_weighted_loss_and_its_gradient_equal_keras_binary_crossentropy() -> None:
    logits, labels = _logits_and_labels()
    weights = torch.tensor([1.0, 2.52])
    ours_logits = logits.clone().requires_grad_(True)
    ours = keras_crossentropy(ours_logits, labels, weights)
    ours.backward()
    keras_logits = logits.clone().requires_grad_(True)
    expected = keras.losses.BinaryCrossentropy()(
        torch.nn.functional.one_hot(labels, 2).float(), torch.softmax(keras_logits, 1), sample_weight=weights[labels]
    )
    expected.backward()
    assert abs(ours.item() - expected.item()) <= 1e-6
    assert (ours_logits.grad - keras_logits.grad).abs().max() <= 1e-6
    # PyTorch's weighted mean divides by the sum of weights and does not clip: a different number.
    assert abs(torch.nn.functional.cross_entropy(logits, labels, weight=weights).item() - expected.item()) > 1e-2


def test_sigmoid_head_and_more_classes_follow_keras_losses() -> None:
    # idc_cnn's sigmoid unit is written as logits [0, z]; its loss is Keras' BCE on sigmoid(z).
    z = torch.tensor([-3.0, -0.2, 0.4, 2.5, 6.0])
    labels = torch.tensor([0, 1, 1, 0, 1])
    expected = keras.losses.BinaryCrossentropy()(labels[:, None].float(), torch.sigmoid(z)[:, None])
    ours = keras_crossentropy(torch.stack([torch.zeros_like(z), z], 1), labels)
    assert abs(float(ours) - float(expected)) <= 1e-6
    four = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.1, -2.0, 1.0], [-30.0, 0.0, 1.0, 2.0]])
    four_labels = torch.tensor([0, 3, 0])
    class_weights = torch.tensor([1.0, 3.0, 3.0, 0.5])
    expected = keras.losses.CategoricalCrossentropy()(
        torch.nn.functional.one_hot(four_labels, 4).float(),
        torch.softmax(four, 1),
        sample_weight=class_weights[four_labels],
    )
    assert abs(float(keras_crossentropy(four, four_labels, class_weights)) - float(expected)) <= 1e-6


def _pngs(root: Path, n: int) -> list[Path]:
    return sorted(root.glob("*/*/*.png"))[:n]


def test_keras_resize_is_load_img_nearest_bit_for_bit(idc_sample: Path) -> None:
    from PIL import Image

    params = TrainParams(input_size=48)
    ours = build_transform(params, stored_hw=(50, 50), train=False, keras=True)
    today = build_transform(params, stored_hw=(50, 50), train=False)
    differs = 0
    for path in _pngs(idc_sample, 20):
        image = np.asarray(Image.open(path).convert("RGB"))
        if image.shape[:2] != (50, 50):
            continue
        expected = np.asarray(keras.utils.load_img(path, target_size=(48, 48), interpolation="nearest"))
        np.testing.assert_array_equal(ours(image=image)["image"].permute(1, 2, 0).numpy(), expected)
        differs += not np.array_equal(today(image=image)["image"].permute(1, 2, 0).numpy(), expected)
    # cv2's INTER_NEAREST (the PyTorch-semantics path) samples other source pixels than PIL's.
    assert differs > 0


def _patch(idc_sample: Path) -> np.ndarray:
    return keras.utils.img_to_array(
        keras.utils.load_img(_pngs(idc_sample, 1)[0], target_size=(48, 48), interpolation="nearest")
    )


@pytest.mark.parametrize(
    "theta, tx, ty, shear, zx, zy",
    [
        (13.7, -3.2, 4.1, 0.04, 0.96, 1.03),  # a `pis` draw
        (-170.0, 2.0, -4.5, 9.0, 1.08, 0.93),  # an `essex2023` draw
    ],
)
def test_affine_transform_equals_keras_apply_affine_transform(idc_sample: Path, theta, tx, ty, shear, zx, zy) -> None:
    image = _patch(idc_sample)
    expected = legacy_image.apply_affine_transform(
        image, theta, tx, ty, shear, zx, zy, row_axis=0, col_axis=1, channel_axis=2, fill_mode="nearest", order=1
    )
    np.testing.assert_array_equal(keras_affine(image, theta, tx, ty, shear, zx, zy), expected)


@pytest.mark.parametrize("augment", ["pis", "essex2023"])
def test_generator_step_equals_keras_apply_transform(idc_sample: Path, augment: str) -> None:
    image = _patch(idc_sample)
    args = augmentation(augment).keras
    generator = legacy_image.ImageDataGenerator(
        rotation_range=args.rotation_range,
        width_shift_range=args.width_shift_range,
        height_shift_range=args.height_shift_range,
        shear_range=args.shear_range,
        zoom_range=args.zoom_range,
        horizontal_flip=args.horizontal_flip,
        vertical_flip=args.vertical_flip,
        brightness_range=args.brightness_range,
    )
    step = KerasImageDataGenerator(args)
    for seed in range(4):
        step.set_random_seed(seed)
        drawn = step.get_params_dependent_on_data({"shape": image.shape}, {})
        keras_params = {
            **{k: drawn[k] for k in ("theta", "tx", "ty", "shear", "zx", "zy", "brightness")},
            "flip_horizontal": drawn["flip_h"],
            "flip_vertical": drawn["flip_v"],
        }
        expected = generator.apply_transform(image, keras_params)
        got = step.apply(image.astype(np.uint8), **drawn).astype(np.float32)
        # Keras keeps the interpolated image in float; the pipeline stores uint8 (rounded), except
        # after the brightness step, which truncates to uint8 in Keras as well.
        assert np.abs(got - expected).max() <= (0.0 if args.brightness_range else 0.5)


def test_generator_draws_are_keras_ranges_and_reproducible() -> None:
    step = KerasImageDataGenerator(augmentation("pis").keras)
    step.set_random_seed(7)
    draws = [step.get_params_dependent_on_data({"shape": (48, 48, 3)}, {}) for _ in range(300)]
    step.set_random_seed(7)
    assert draws[0] == step.get_params_dependent_on_data({"shape": (48, 48, 3)}, {})
    column = {k: np.array([d[k] for d in draws], dtype=float) for k in draws[0] if k != "brightness"}
    assert np.abs(column["theta"]).max() <= 20 and np.abs(column["theta"]).max() > 18
    assert np.abs(column["tx"]).max() <= 4.8 and np.abs(column["ty"]).max() <= 4.8
    assert np.abs(column["shear"]).max() <= 0.05
    assert column["zx"].min() >= 0.95 and column["zy"].max() <= 1.05
    assert not np.array_equal(column["zx"], column["zy"])  # drawn independently for x and y
    assert 0.35 < column["flip_h"].mean() < 0.65 and 0.35 < column["flip_v"].mean() < 0.65


def test_torch_semantics_keeps_pytorch_optimisers() -> None:
    model = torch.nn.Linear(3, 2)
    for name, cls in [
        ("adagrad", torch.optim.Adagrad),
        ("adam", torch.optim.Adam),
        ("adamax", torch.optim.Adamax),
        ("sgd", torch.optim.SGD),
        ("adamw", torch.optim.AdamW),
    ]:
        assert type(build_optimizer(TrainParams(optimizer=name), model, keras=False)) is cls
    assert isinstance(build_optimizer(TrainParams(optimizer="adagrad"), model, keras=True), KerasAdagrad)


def test_keras_pipeline_resizes_first_and_replays_its_seed(idc_sample: Path) -> None:
    from PIL import Image

    image = np.asarray(Image.open(_pngs(idc_sample, 1)[0]).convert("RGB"))
    params = TrainParams(input_size=48, augment="pis")
    first = build_transform(params, stored_hw=(50, 50), train=True, seed=3, keras=True)
    second = build_transform(params, stored_hw=(50, 50), train=True, seed=3, keras=True)
    assert [type(t).__name__ for t in first.transforms][:2] == ["Resize", "KerasImageDataGenerator"]
    draws = [first(image=image)["image"] for _ in range(3)]
    assert all(torch.equal(a, second(image=image)["image"]) for a in draws)
    assert not torch.equal(draws[0], draws[1])
    first.set_random_seed(11)
    again = first(image=image)["image"]
    first.set_random_seed(11)
    assert torch.equal(again, first(image=image)["image"]) and again.dtype == torch.uint8
