"""Probe runs: heads trained on an encoder's embeddings computed once, the kNN probe's memory,
and a registered probe that predicts on raw patches with its encoder read by reference."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

import baselines
from harness import tracking
from harness.config import DatasetSpec, ProtocolSpec, TrainingSpec, TrainParams
from harness.data.cache import open_patch_cache
from harness.data.prepare import PreparedData, index_dataset, prepare
from harness.data.splits import TEST, read_split
from harness.model_registry import log_fold_model, log_served_model
from harness.run_spec import RunSpec
from harness.train import FitResult, fit, served_fold

# Phikon's family (a ViT in Hugging Face's key names) at toy size: the key mapping runs for real.
ENCODER = "phikon"
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32}
PROBES = ("linear_probe", "mlp_probe", "knn_probe")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path) -> PreparedData:
    spec = DatasetSpec(name="idc", root=synthetic_idc, allow_subset=True)
    manifest, _ = index_dataset(spec)
    return prepare(manifest, spec, ProtocolSpec(folds=3, test_fraction=0.25), tmp_path_factory.mktemp("work"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return baselines.write_random_encoder(ENCODER, tmp_path_factory.mktemp("weights") / "phikon.bin", **TINY)


def _spec(data: PreparedData, baseline: str, weights: Path) -> RunSpec:
    params = TrainParams(optimizer="adamw", lr=1e-3, batch_size=16, epochs_max=2, normalisation="unit")
    return RunSpec(
        baseline=baseline,
        pretrained=weights,
        params=params,
        model_kwargs={"encoder": ENCODER, "encoder_arch": TINY},
        data=data,
        fold=0,
        max_epochs=2,
        seed=1,
        training=TrainingSpec(patience=2),
    )


@pytest.fixture(scope="module")
def fits(prepared: PreparedData, weights: Path) -> dict[str, FitResult]:
    return {name: fit(_spec(prepared, name, weights)) for name in PROBES}


def test_every_probe_reads_one_embedding_cache_and_tests_the_test_patients(
    prepared: PreparedData, fits: dict[str, FitResult]
) -> None:
    split = read_split(prepared.split_path)
    test_paths = set(split.assignments.rel_path[split.assignments.split == TEST])
    for name, result in fits.items():
        assert result.test is not None, name
        assert set(result.test.predictions.rel_path) == test_paths, name
        losses = [h.train_loss for h in result.history]
        # A kNN probe trains nothing: its memory is its fit, and it logs no training loss.
        assert (np.isnan(losses) if name == "knn_probe" else np.isfinite(losses)).all(), name
    # The three probes share one encoder, one weights file and one dataset: one cache.
    assert len(list(prepared.cache_path.parent.glob("embeddings-*.npy"))) == 1


def test_the_knn_probe_trains_nothing_and_remembers_the_training_fold(
    prepared: PreparedData, fits: dict[str, FitResult]
) -> None:
    knn = fits["knn_probe"]
    assert knn.param_counts["torch"] == 0
    split = read_split(prepared.split_path)
    train_rows = int(((split.assignments.split != TEST) & (split.assignments.fold != 0)).sum())
    memory = [v for k, v in knn.state_dict.items() if v.ndim == 2]
    assert [m.shape[0] for m in memory] == [train_rows]


def test_probe_runs_log_the_weights_digest(prepared: PreparedData, weights: Path) -> None:
    logged = _spec(prepared, "linear_probe", weights).logged_params()
    assert logged["encoder_sha256"] == baselines.weights_digest(weights)
    assert logged["encoder"] == ENCODER


def test_a_served_probe_predicts_on_raw_patches_what_the_run_evaluated(
    tmp_path: Path, prepared: PreparedData, weights: Path, fits: dict[str, FitResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(prepared, "linear_probe", weights)
    result = fits["linear_probe"]
    served = served_fold(spec, result, examples=4)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.open_store(store)
    experiment = tracker.experiment_id("probes")
    run_id = tracker.start_run(experiment, name="fold", run_type=tracking.RunType.FOLD, tags={}, params={})
    torch_uri = log_fold_model(store, run_id, served)
    model_uri = log_served_model(store, run_id, {0: torch_uri}, served.stored_examples, prepared.class_names)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    model = mlflow.pyfunc.load_model(model_uri)
    split = read_split(prepared.split_path)
    test_rows = np.flatnonzero(split.assignments.split.to_numpy() == TEST)
    stored = np.asarray(open_patch_cache(prepared.cache_path)[test_rows])
    predicted = model.predict(stored)
    assert result.test is not None
    expected = result.test.predictions.set_index("rel_path").loc[split.assignments.rel_path.iloc[test_rows]]
    probability_columns = [c for c in expected.columns if c.startswith("prob_")]
    np.testing.assert_allclose(
        predicted[list(prepared.class_names)].to_numpy(), expected[probability_columns].to_numpy(), atol=1e-6
    )
    # The served model holds the encoder by reference: its digest, not a copy of the weights.
    assert served.recipe.encoder is not None
    assert served.recipe.encoder.sha256 == baselines.weights_digest(weights)


def test_a_served_probe_refuses_an_encoder_file_whose_bytes_changed(
    tmp_path: Path, prepared: PreparedData, weights: Path, fits: dict[str, FitResult]
) -> None:
    copy = tmp_path / "phikon.bin"
    copy.write_bytes(weights.read_bytes())
    spec = _spec(prepared, "linear_probe", copy)
    served = served_fold(spec, fits["linear_probe"], examples=2)
    assert served.recipe.encoder is not None
    baselines.write_random_encoder(ENCODER, copy, seed=7, **TINY)
    with pytest.raises(baselines.WeightsFileError, match=r"is not the one this model was trained with"):
        served.recipe.encoder.build()


def test_a_fine_tuned_encoder_trains_its_last_block_and_serves_on_stored_patches(
    tmp_path: Path, prepared: PreparedData, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"encoder": ENCODER, "encoder_arch": TINY, "blocks": 1, "layer_decay": 0.75}
    spec = _spec(prepared, "finetune", weights)
    spec = spec.model_copy(update={"model_kwargs": options, "params": spec.params.model_copy(update={"epochs_max": 1})})
    result = fit(spec)
    assert result.test is not None and not result.test.galleries  # a ViT's tokens are no Grad-CAM feature map
    served = served_fold(spec, result, examples=2)
    assert served.recipe.encoder is None  # its encoder's weights changed: they are the model's own
    store = tracking.open_store(f"sqlite:///{tmp_path / 'mlflow.db'}").uri
    tracker = tracking.tracker_for(store)
    experiment = tracker.experiment_id("finetune")
    run_id = tracker.start_run(experiment, name="fold", run_type=tracking.RunType.FOLD, tags={}, params={})
    uri = log_fold_model(store, run_id, served)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    program = mlflow.pytorch.load_model(uri)
    assert tuple(program(torch.from_numpy(served.example_inputs)).shape) == (2, len(prepared.class_names))


def test_a_probe_without_a_weights_file_is_noted_as_a_random_encoder(
    tmp_path: Path, synthetic_idc: Path, weights: Path
) -> None:
    from harness.config import load_experiment
    from harness.sweep._tuner import search_notes
    from tests.conftest import experiment_dict, write_experiment

    fixed = {"encoder": ENCODER, "encoder_arch": TINY}
    entries = [
        {"name": "linear_probe", "fixed": fixed},
        {"name": "knn_probe", "pretrained": str(weights), "fixed": fixed},
        "cancernet",
    ]
    config = load_experiment(
        write_experiment(tmp_path / "e.yaml", experiment_dict(synthetic_idc, tmp_path, baselines=entries))
    )
    random = [n for n in search_notes(config) if "random-initialised" in n]
    assert random == ["linear_probe: no weights file (`pretrained`): its encoder is random-initialised"]


def test_a_probe_run_is_the_same_whether_it_computed_the_embeddings_or_found_them(
    prepared: PreparedData, weights: Path, fits: dict[str, FitResult]
) -> None:
    # The first fit of the module computed the cache (building the encoder draws random numbers
    # before its weights are read); this one finds it. The head starts from the same weights.
    again = fit(_spec(prepared, "linear_probe", weights))
    first = fits["linear_probe"]
    np.testing.assert_equal([h.val for h in again.history], [h.val for h in first.history])
    assert again.test is not None and first.test is not None
    np.testing.assert_equal(again.test.metrics, first.test.metrics)


def test_heads_on_embeddings_train_in_fp32_whatever_the_experiment_asks(
    tmp_path: Path, synthetic_idc: Path, weights: Path, prepared: PreparedData
) -> None:
    from harness.config import load_experiment
    from tests.conftest import experiment_dict, write_experiment

    fixed = {"encoder": ENCODER, "encoder_arch": TINY}
    entries = [{"name": "knn_probe", "pretrained": str(weights), "fixed": fixed}, "cancernet"]
    data = experiment_dict(synthetic_idc, tmp_path, baselines=entries)
    data["training"] = {**data.get("training", {}), "compute": {"precision": "bf16"}}
    config = load_experiment(write_experiment(tmp_path / "e.yaml", data))
    knn, cnn = (RunSpec.build(config, prepared, name, fold=0) for name in ("knn_probe", "cancernet"))
    # bf16 cannot tell a kNN probe's nearest neighbours apart; the run logs what it ran.
    assert (knn.training.compute.precision, knn.logged_params()["precision"]) == ("fp32", "fp32")
    assert cnn.training.compute.precision == "bf16"


def test_a_served_probe_finds_a_copy_of_its_weights_by_digest_on_another_machine(
    tmp_path: Path, prepared: PreparedData, weights: Path, fits: dict[str, FitResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    trained_with = tmp_path / "trained" / "phikon.bin"
    trained_with.parent.mkdir()
    trained_with.write_bytes(weights.read_bytes())
    served = served_fold(_spec(prepared, "linear_probe", trained_with), fits["linear_probe"], examples=2)
    encoder = served.recipe.encoder
    assert encoder is not None
    # Another machine: the file is not where the run read it, a copy lies elsewhere under another name.
    elsewhere = tmp_path / "elsewhere" / "models"
    elsewhere.mkdir(parents=True)
    trained_with.rename(elsewhere / "phikon-copy.bin")
    monkeypatch.delenv("HISTO_HARNESS_WEIGHTS", raising=False)
    with pytest.raises(baselines.WeightsFileError, match=r"never downloaded\): set HISTO_HARNESS_WEIGHTS to a folder"):
        encoder.build()
    monkeypatch.setenv("HISTO_HARNESS_WEIGHTS", str(tmp_path / "elsewhere"))
    assert encoder.located() == elsewhere / "phikon-copy.bin"
    np.testing.assert_array_equal(
        served.recipe.model_inputs(served.stored_examples, encoder.build()),
        served.recipe.model_inputs(served.stored_examples, baselines.create_encoder(ENCODER, weights, **TINY)),
    )
