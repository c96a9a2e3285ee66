"""Device-resident batches and the batched augmentation: the same transforms as the per-image
pipeline applies, each sample with its own parameters."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import baselines
from harness.config import ComputeSpec, DatasetSpec, ProtocolSpec, TrainingSpec, TrainParams
from harness.data.augmentations import augmentation
from harness.data.batched import (
    BatchAugment,
    DeviceBatches,
    apply_dihedral,
    apply_keras,
    draw_dihedral,
    draw_keras,
    resize_nearest,
)
from harness.data.dataset import part_dataset
from harness.data.normalise import batch_normaliser
from harness.data.prepare import PreparedData, index_dataset, prepare
from harness.data.transforms import build_transform, keras_affine, keras_brightness
from harness.errors import InputError
from harness.evaluation import predict
from harness.run_spec import RunSpec
from harness.train import fit


def _patches(n: int, size: int = 48) -> np.ndarray:
    """Smooth random patches (N x size x size x 3 uint8): interpolation has gradients to sample."""
    coarse = np.random.default_rng(0).integers(0, 256, (n, size // 4, size // 4, 3)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 4, 1), 4, 2).astype(np.uint8)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _one(draw: object, i: int) -> object:
    """Return the draw of sample i alone."""
    return dataclasses.replace(
        draw,
        **{
            f.name: getattr(draw, f.name)[i : i + 1]
            for f in dataclasses.fields(draw)
            if getattr(draw, f.name) is not None
        },
    )


@pytest.mark.parametrize("augment", ["pis", "essex2023"])
def test_the_keras_generator_on_a_batch_is_keras_one_image_at_a_time(augment: str) -> None:
    images = _patches(16)
    draw = draw_keras(16, augmentation(augment).keras, (48, 48), torch.Generator().manual_seed(3))
    out = apply_keras(_nchw(images), draw)
    differing, worst = 0, 0
    for i in range(len(images)):
        # Each sample is transformed with its own parameters, whatever else is in the batch.
        assert torch.equal(apply_keras(_nchw(images[i : i + 1]), _one(draw, i))[0], out[i])
        keys = ("theta", "tx", "ty", "shear", "zx", "zy")
        reference = keras_affine(images[i].astype(np.float32), **{k: float(getattr(draw, k)[i]) for k in keys})
        reference = reference[:, ::-1] if draw.flip_h[i] else reference
        reference = reference[::-1] if draw.flip_v[i] else reference
        if draw.brightness is None:
            reference = np.clip(np.rint(reference), 0, 255).astype(np.uint8)
        else:
            reference = keras_brightness(reference, float(draw.brightness[i]))
        difference = np.abs(out[i].numpy().transpose(1, 2, 0).astype(int) - reference.astype(int))
        differing, worst = differing + int((difference > 0).sum()), max(worst, int(difference.max()))
    # Sampling coordinates in float32 (scipy's are float64) moves a rare value across a rounding
    # edge: one grey level, two where brightness scales it afterwards.
    assert worst <= 2 and differing / out.numel() < 1e-3, (worst, differing)
    assert draw.theta.abs().max() <= augmentation(augment).keras.rotation_range and draw.theta.std() > 0


def test_flips_and_turns_are_numpys_per_image() -> None:
    images = _patches(32)
    draw = draw_dihedral(32, True, torch.Generator().manual_seed(0))
    out = apply_dihedral(_nchw(images), draw).numpy().transpose(0, 2, 3, 1)
    for i, image in enumerate(images):
        expected = image[:, ::-1] if draw.flip_h[i] else image
        expected = expected[::-1] if draw.flip_v[i] else expected
        np.testing.assert_array_equal(out[i], np.rot90(expected, int(draw.turns[i])))
    assert set(draw.turns.tolist()) == {0, 1, 2, 3} and 0 < draw.flip_h.sum() < 32


@pytest.mark.parametrize("keras", [True, False])
def test_the_resize_picks_the_pixels_the_per_image_pipeline_picks(keras: bool) -> None:
    images = np.random.default_rng(1).integers(0, 256, (4, 50, 50, 3), dtype=np.uint8)
    transform = build_transform(TrainParams(input_size=48), stored_hw=(50, 50), train=False, keras=keras)
    expected = np.stack([transform(image=image)["image"].numpy() for image in images])
    np.testing.assert_array_equal(resize_nearest(_nchw(images), (48, 48), keras).numpy(), expected)


def test_an_epoch_of_device_batches_holds_every_training_image_once_with_its_label() -> None:
    images, labels = _patches(70), np.arange(70) % 2
    augment = BatchAugment("none", TrainParams(augment="none", input_size=48).input_hw, keras=False)
    batches = DeviceBatches(images, labels, augment, batch_size=16, device="cpu", seed=0)
    seen = [(image.tobytes(), int(label)) for b in batches for image, label in zip(b["image"].numpy(), b["label"])]
    # Four full batches; the last partial one is dropped, as the per-image loader drops it.
    assert len(batches) == 4 and len(seen) == 64
    expected = Counter((image.transpose(2, 0, 1).tobytes(), int(label)) for image, label in zip(images, labels))
    assert not Counter(seen) - expected and len(set(seen)) == 64


def test_batches_drawn_with_a_seed_are_its_own_draw_and_leave_the_originals_streams_alone() -> None:
    images, labels = _patches(40), np.arange(40) % 2
    hw = TrainParams(augment="dihedral", input_size=48).input_hw

    def batches() -> DeviceBatches:
        return DeviceBatches(images, labels, BatchAugment("dihedral", hw, keras=False), batch_size=8, device="cpu")

    def epoch(b: DeviceBatches) -> list[tuple[bytes, bytes]]:
        return [(x["image"].numpy().tobytes(), x["label"].numpy().tobytes()) for x in b]

    original, untouched = batches(), batches()
    drawn = original.drawn_with(7)
    assert drawn.images is original.images  # the same device patches, not a second copy
    assert epoch(drawn) == epoch(batches().drawn_with(7)) != epoch(original.drawn_with(8))
    assert epoch(original) == epoch(untouched) != epoch(drawn)


@pytest.mark.parametrize("keras", [True, False])
def test_evaluation_batches_on_the_device_predict_what_the_per_image_loader_predicts(keras: bool) -> None:
    stored = np.random.default_rng(1).integers(0, 256, (37, 50, 50, 3), dtype=np.uint8)
    labels, rows = np.arange(37) % 2, np.arange(3, 37)
    params = TrainParams(augment="pis" if keras else "dihedral", input_size=48)
    per_image = part_dataset(stored, rows, labels, params, grid=None, train=False, seed=0, keras=keras)
    loader = torch.utils.data.DataLoader(per_image, batch_size=16)  # as the evaluation loader: in order, all rows
    resize = BatchAugment("none", params.input_hw, keras=keras)
    batches = DeviceBatches(stored[rows], labels[rows], resize, batch_size=16, device="cpu", shuffle=False)
    torch.manual_seed(0)
    model, normalise = baselines.create("cancernet", num_classes=2), batch_normaliser("unit", "cpu")
    (want, want_labels), (got, got_labels) = predict(model, loader, normalise), predict(model, batches, normalise)
    assert len(batches) == 3 and got.shape == (34, 2)  # the last partial batch is kept
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_labels, labels[rows])
    np.testing.assert_array_equal(want_labels, labels[rows])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (what it checks is GPU-side)")
@pytest.mark.parametrize("augment", ["pis", "dihedral"])
def test_an_epoch_of_device_batches_makes_no_call_that_waits_for_the_gpu(augment: str) -> None:
    hw = TrainParams(augment=augment, input_size=48).input_hw
    augment_ = BatchAugment(augment, hw, keras=augmentation(augment).keras is not None)
    stored = np.random.default_rng(0).integers(0, 256, (70, 50, 50, 3), dtype=np.uint8)  # resized to 48
    batches = DeviceBatches(stored, np.arange(70) % 2, augment_, batch_size=16, device="cuda", seed=0)
    first = [b["image"].cpu() for b in batches]  # the resize's cached index rows are made here
    deterministic = torch.are_deterministic_algorithms_enabled()
    # As fit() runs it (seed_everything): deterministic kernels may take other, waiting paths.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call below raises
    try:
        again = list(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.use_deterministic_algorithms(deterministic)
    assert len(again) == len(first) == 4 and all(b["image"].shape == (16, 3, *hw) for b in again)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path) -> PreparedData:
    spec = DatasetSpec(name="idc", root=synthetic_idc, allow_subset=True)
    manifest, _ = index_dataset(spec)
    return prepare(manifest, spec, ProtocolSpec(folds=3, test_fraction=0.25), tmp_path_factory.mktemp("work"))


def _spec(data: PreparedData, loader: str, augment: str) -> RunSpec:
    return RunSpec(
        baseline="cancernet",
        params=TrainParams(optimizer="adam", lr=1e-3, batch_size=32, epochs_max=2, input_size=48, augment=augment),
        data=data,
        fold=0,
        max_epochs=2,
        training=TrainingSpec(compute=ComputeSpec(loader=loader)),
    )


def test_a_run_on_device_batches_is_deterministic_and_refused_where_it_has_no_batched_form(
    prepared: PreparedData,
) -> None:
    spec = _spec(prepared, "batched", "pis")  # CancerNet's Keras generator, 50 -> 48 px
    first, second = fit(spec), fit(spec)
    np.testing.assert_equal([h.val for h in first.history], [h.val for h in second.history])
    assert np.isfinite(first.history[-1].train_loss)
    with pytest.raises(InputError, match="cancernet's training \\(augment gusa.*has no batched form"):
        fit(_spec(prepared, "batched", "gusa"))
