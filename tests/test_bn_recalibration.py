"""BatchNorm recalibration: running statistics become the plain average of the batch statistics of
each BatchNorm's input, nothing else in the model or the random streams changes, and inside `fit`
the option changes what evaluation normalises with, never what training learns."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import baselines
from harness.bn_recalibration import batchnorms, recalibrate_batchnorm
from harness.config import ComputeSpec, DatasetSpec, ProtocolSpec, TrainingSpec, TrainParams
from harness.data.prepare import PreparedData, index_dataset, prepare
from harness.run_spec import RunSpec
from harness.train import EpochReport, fit


def _batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    # Inputs in [0, 1] as CancerNet sees them, with a per-channel offset so the statistics differ by channel.
    return [
        torch.rand(6, 3, 48, 48, generator=generator) * 0.5 + torch.tensor([0.1, 0.3, 0.2]).view(3, 1, 1)
        for _ in range(3)
    ]


def _direct_statistics(model: nn.Module, batches: list[torch.Tensor], *, dropout: bool) -> dict[str, tuple]:
    """Mean over batches of each BatchNorm input's per-channel batch mean and unbiased variance,
    from a training-mode forward of a copy (dropout on or off), hooked at each BatchNorm's input."""
    model = copy.deepcopy(model).train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train(dropout)
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in batchnorms(model)}

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
            x = inputs[0].double().transpose(0, 1).flatten(1)  # channels x (batch, height, width)
            seen[name].append((x.mean(1), x.var(1, unbiased=True)))

        return record

    for name, bn in batchnorms(model).items():
        bn.register_forward_pre_hook(hook(name))
    torch.manual_seed(11)
    with torch.no_grad():
        for batch in batches:
            model(batch)
    return {name: tuple(torch.stack(s).mean(0) for s in zip(*stats)) for name, stats in seen.items()}


@pytest.mark.parametrize("dropout", [True, False])
def test_running_statistics_equal_the_batch_statistics_of_each_batchnorm_input(dropout: bool) -> None:
    torch.manual_seed(0)
    model = baselines.create("cancernet", num_classes=2)
    model.eval()
    before = copy.deepcopy(model.state_dict())
    momenta = [bn.momentum for bn in batchnorms(model).values()]
    batches = _batches()
    expected = _direct_statistics(model, batches, dropout=dropout)
    torch.manual_seed(11)  # the same dropout masks as the direct computation
    rng = torch.get_rng_state()

    assert recalibrate_batchnorm(model, batches, dropout=dropout) == 3

    norms = batchnorms(model)
    assert len(norms) == 7
    for name, bn in norms.items():
        mean, var = expected[name]
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-4, atol=1e-7)
        assert not torch.equal(bn.running_var, before[f"{name}.running_var"])
    assert [bn.momentum for bn in norms.values()] == momenta
    after = model.state_dict()
    for key, value in before.items():
        if not key.endswith(("running_mean", "running_var")):
            assert torch.equal(after[key], value), key  # weights, biases and num_batches_tracked
    assert not any(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)


def test_dropout_changes_what_the_next_batchnorm_sees() -> None:
    torch.manual_seed(0)
    model = baselines.create("cancernet", num_classes=2)
    with_dropout, without = copy.deepcopy(model), copy.deepcopy(model)
    recalibrate_batchnorm(with_dropout, _batches(), dropout=True)
    recalibrate_batchnorm(without, _batches(), dropout=False)
    first, second = list(batchnorms(with_dropout).values()), list(batchnorms(without).values())
    # The first BatchNorm comes before any dropout; the second follows the first Dropout.
    torch.testing.assert_close(first[0].running_var, second[0].running_var)
    assert not torch.allclose(first[1].running_var, second[1].running_var)


def test_no_batch_is_an_error_and_leaves_momentum_as_it_was() -> None:
    model = baselines.create("cancernet", num_classes=2)
    momenta = [bn.momentum for bn in batchnorms(model).values()]
    with pytest.raises(ValueError, match="at least one training batch"):
        recalibrate_batchnorm(model, [], dropout=True)
    assert [bn.momentum for bn in batchnorms(model).values()] == momenta


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, synthetic_idc: Path) -> PreparedData:
    spec = DatasetSpec(name="idc", root=synthetic_idc, allow_subset=True)
    manifest, _ = index_dataset(spec)
    return prepare(manifest, spec, ProtocolSpec(folds=3, test_fraction=0.25), tmp_path_factory.mktemp("work"))


@pytest.mark.parametrize("loader", ["per_image", "batched"])
def test_in_fit_the_option_changes_the_running_statistics_and_nothing_that_training_learns(
    prepared: PreparedData, loader: str
) -> None:
    params = TrainParams(optimizer="adagrad", lr=1e-2, batch_size=16, epochs_max=2, input_size=48, augment="pis")
    spec = RunSpec(
        baseline="cancernet",
        params=params,
        data=prepared,
        fold=0,
        max_epochs=2,
        seed=1,
        evaluate_test=False,
        # batched: recalibrated on the device batches
        training=TrainingSpec(patience=2, compute=ComputeSpec(loader=loader)),
    )
    last: dict[bool, dict[str, torch.Tensor]] = {}
    losses: dict[bool, list[float]] = {False: [], True: []}

    def keep(option: bool):
        def report(entry: EpochReport) -> None:
            losses[option].append(entry.train_loss)
            last[option] = entry.snapshot().model

        return report

    for option in (False, True):
        training = spec.training.model_copy(update={"bn_recalibration": option})
        fit(spec.model_copy(update={"training": training}), keep(option))
    assert len(losses[True]) == 2 and losses[True] == losses[False]
    for key, value in last[False].items():
        if key.endswith(("running_mean", "running_var")):
            assert not torch.allclose(last[True][key], value), key
        else:
            assert torch.equal(last[True][key], value), key


def test_a_frozen_batchnorm_that_keras_runs_in_inference_mode_keeps_its_statistics() -> None:
    torch.manual_seed(0)
    model = baselines.create("cancernet", num_classes=2, semantics="source")
    frozen, trained = list(batchnorms(model).values())[1:3]
    for param in frozen.parameters():
        param.requires_grad_(False)
    frozen.running_mean.fill_(0.5)
    before = frozen.running_mean.clone(), frozen.running_var.clone(), trained.running_var.clone()
    recalibrate_batchnorm(model, _batches(), dropout=False)
    assert torch.equal(frozen.running_mean, before[0]) and torch.equal(frozen.running_var, before[1])
    assert not torch.equal(trained.running_var, before[2])
