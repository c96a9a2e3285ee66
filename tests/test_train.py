"""One run on one fold: deterministic, learns the synthetic signal, touches test patients once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.config import ComputeSpec, DatasetSpec, ProtocolSpec, TrainingSpec, TrainParams
from harness.data.prepare import PreparedData, index_dataset, prepare
from harness.data.splits import TEST, read_split
from harness.run_spec import RunSpec
from harness.train import DivergedError, EpochReport, TrainState, class_weights, fit


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path) -> PreparedData:
    spec = DatasetSpec(name="idc", root=synthetic_idc, allow_subset=True)
    manifest, _ = index_dataset(spec)
    return prepare(manifest, spec, ProtocolSpec(folds=3, test_fraction=0.25), tmp_path_factory.mktemp("work"))


def _spec(data: PreparedData, **params) -> RunSpec:
    defaults = dict(optimizer="adam", lr=3e-3, batch_size=32, epochs_max=4, input_size=48, augment="flips")
    return RunSpec(
        baseline="cancernet",
        params=TrainParams(**{**defaults, **params}),
        data=data,
        fold=0,
        max_epochs=4,
        seed=5,
        training=TrainingSpec(patience=3),
    )


def _training(spec: RunSpec, **settings) -> RunSpec:
    """Return `spec` with these run-level training settings changed."""
    return spec.model_copy(update={"training": spec.training.model_copy(update=settings)})


def test_same_config_twice_gives_the_same_metrics(prepared: PreparedData) -> None:
    first, second = fit(_spec(prepared, epochs_max=2)), fit(_spec(prepared, epochs_max=2))
    # assert_equal treats NaN as equal to NaN (an undefined precision is still the same result).
    np.testing.assert_equal([h.val for h in first.history], [h.val for h in second.history])
    np.testing.assert_equal(first.test.metrics, second.test.metrics)
    assert first.test.metrics["accuracy"] > 0


def test_learns_the_synthetic_signal_and_tests_only_test_patients(prepared: PreparedData) -> None:
    # BatchNorm's running variance starts at 1 while CancerNet's first activations have a variance
    # near 3e-3; with Keras' momentum 0.99 (CancerNet's source semantics) it has not forgotten that
    # start after a few hundred steps, so eval-mode predictions are those of stale statistics
    # (bench/recipes.py --diagnose). Recalibrating BatchNorm before each evaluation measures the model.
    reports: list[EpochReport] = []
    spec = _training(_spec(prepared, batch_size=4, epochs_max=4, lr=1e-3), bn_recalibration=True)
    result = fit(spec, report=reports.append)
    assert result.best_val["accuracy"] > 0.85
    assert [r.epoch for r in reports] == list(range(1, len(reports) + 1))
    # The test set is evaluated once, on the last report, with the best epoch's weights.
    assert [r.test is not None for r in reports] == [False] * (len(reports) - 1) + [True]
    split = read_split(prepared.split_path)
    test_paths = set(split.assignments.rel_path[split.assignments.split == TEST])
    assert set(result.test.predictions.rel_path) == test_paths
    assert result.test.confusion.sum() == len(test_paths)
    assert reports[-1].param_counts["torch"] == 1_233_533


def test_patience_stops_when_validation_loss_stops_improving(prepared: PreparedData) -> None:
    # An absurd learning rate makes validation loss jump after the first epoch.
    result = fit(_training(_spec(prepared, lr=5.0, optimizer="sgd", epochs_max=4), patience=1))
    assert len(result.history) < 4
    assert result.history[-1].done and result.history[-1].epoch - result.best_epoch == 1


def test_class_weights_are_n_max_over_n_c() -> None:
    weights = class_weights(np.array([0] * 143 + [1] * 57), 2)
    assert weights.tolist() == pytest.approx([1.0, 143 / 57])


def test_a_run_resumed_from_an_epoch_snapshot_matches_one_never_interrupted(prepared: PreparedData) -> None:
    # Augmentation, shuffling and dropout all draw random numbers: resuming must restore every stream.
    spec = _training(_spec(prepared, epochs_max=3, augment="pis", lr=1e-3), patience=5)
    straight = fit(spec)
    snapshots: dict[int, TrainState] = {}

    def stop_after_two(entry: EpochReport) -> None:
        snapshots[entry.epoch] = entry.snapshot()
        if entry.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(spec, stop_after_two)
    # Epoch 1 is the best epoch so far: its weights are saved once, as the model's. Resuming from
    # it is a sweep with checkpoint_every 2 losing epoch 2: the epoch is trained again.
    assert snapshots[1].best.state == {} and snapshots[1].model
    for epoch, state in snapshots.items():
        resumed = fit(spec, resume=state)
        assert [h.epoch for h in resumed.history] == [1, 2, 3], epoch
        np.testing.assert_equal([h.val for h in resumed.history], [h.val for h in straight.history])
        np.testing.assert_equal(resumed.test.metrics, straight.test.metrics)
        assert resumed.best_epoch == straight.best_epoch


def test_fp16_trains_with_a_gradient_scaler_kept_in_the_snapshot(prepared: PreparedData) -> None:
    # bf16 is exercised through `harness train` (tests/sweep/test_sweep.py); float16 on a CPU is
    # slow, so this run is a ResNet-18 on 16 px inputs and skips the test set.
    compute = ComputeSpec(precision="fp16", channels_last=True)
    spec = _spec(prepared, epochs_max=1, input_size=16).model_copy(
        update={
            "baseline": "resnet18",
            "model_kwargs": {"freeze": "none"},
            "evaluate_test": False,
            "threads": 2,
        }
    )
    spec = _training(spec, compute=compute)
    snapshots: list[TrainState] = []
    result = fit(spec, lambda entry: snapshots.append(entry.snapshot()))
    assert np.isfinite(result.history[0].train_loss) and 0 <= result.best_val["accuracy"] <= 1
    assert spec.logged_params()["precision"] == "fp16" and spec.logged_params()["channels_last"] == "true"
    # The scaler's state goes with the checkpoint, so a resumed fp16 run scales as before.
    assert set(snapshots[0].scaler) >= {"scale", "_growth_tracker"}


def test_worker_processes_train_the_per_image_path_and_are_a_param(prepared: PreparedData) -> None:
    compute = ComputeSpec(loader="per_image", loader_workers=2)
    spec = _training(_spec(prepared, epochs_max=1).model_copy(update={"evaluate_test": False}), compute=compute)
    result = fit(spec)
    assert np.isfinite(result.history[0].train_loss) and 0 <= result.best_val["accuracy"] <= 1
    assert spec.logged_params()["loader_workers"] == "2"


def test_a_diverging_run_raises_with_where_it_diverged(prepared: PreparedData) -> None:
    with pytest.raises(
        DivergedError, match=r"training loss became nan at epoch 1, step \d+ \(cancernet, adam lr 1e\+30"
    ):
        fit(_spec(prepared, lr=1e30, optimizer="adam"))
