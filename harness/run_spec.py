"""The one description of a run: `RunSpec`, built by `RunSpec.build` from (experiment, baseline,
point, fold) for `harness train`, sweep trials, the fold retrain, studies and benches alike.

A point resolves as the baseline's recipe, then the experiment's pinned values (`fixed`), then the
sampled values, so every key of the recipe reaches every run unless the search or `fixed`
overrides it; a sweep's recipe trial and `harness train` of the same recipe are one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

import baselines
from harness.config import ExperimentConfig, SearchSpace, TrainingSpec, TrainParams, split_point
from harness.data.prepare import PreparedData

# The training settings every run logs as params beside its hyperparameters (the protocol options).
PROTOCOL_PARAMS = ("semantics", "bn_recalibration", "checkpoint_every")


def resolve_point(space: SearchSpace, point: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return every hyperparameter of a run of `space` at `point`: the recipe, then `fixed`, then
    the sampled values."""
    return {**space.recipe, **space.fixed, **(point or {})}


def epoch_budget(config: ExperimentConfig, baseline: str, point: dict[str, Any] | None = None) -> int:
    """Return the epochs a run of `baseline` at `point` can train (RunSpec.epochs, without the
    data): its resolved epochs_max, capped by search.max_epochs."""
    params, _ = split_point(resolve_point(config.baseline_space(baseline), point))
    return min(params.epochs_max, config.search.max_epochs)


def training_of(training: TrainingSpec, baseline: str) -> TrainingSpec:
    """Return the run-level settings a run of `baseline` trains with: the experiment's, except that
    a head on embeddings trains in fp32 whatever `compute.precision` says (reduced precision cannot
    tell a kNN probe's nearest neighbours apart, and heads this small gain nothing from it)."""
    if baselines.info(baseline).input_kind != "embedding" or training.compute.precision == "fp32":
        return training
    return training.model_copy(update={"compute": training.compute.model_copy(update={"precision": "fp32"})})


class RunSpec(BaseModel):
    """Everything one run needs, with absolute paths so it means the same in any working directory:
    the baseline and its weights, its hyperparameters (training knobs and model options), the
    prepared data and fold, the epoch budget and seed, its CPU threads, and the run-level training
    settings of the experiment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: str
    pretrained: Path | None = None
    params: TrainParams
    model_kwargs: dict[str, Any] = {}
    data: PreparedData
    fold: int
    max_epochs: int
    seed: int = 0
    threads: int = 1
    training: TrainingSpec = TrainingSpec()
    evaluate_test: bool = True

    @classmethod
    def build(
        cls,
        config: ExperimentConfig,
        data: PreparedData,
        baseline: str,
        *,
        fold: int,
        point: dict[str, Any] | None = None,
    ) -> RunSpec:
        """Return the run of `baseline` in `config` on `fold` of `data` at `point` (the sampled
        values; None: the recipe with the experiment's pinned values)."""
        entry = next(b for b in config.baselines if b.name == baseline)
        space = config.baseline_space(baseline)
        params, model_kwargs = split_point(resolve_point(space, point))
        return cls(
            baseline=baseline,
            pretrained=entry.pretrained,
            params=params,
            model_kwargs=model_kwargs,
            data=data,
            fold=fold,
            max_epochs=config.search.max_epochs,
            seed=config.protocol.seed,
            threads=max(1, int(config.trial_resources(baseline, space.resources).cpu)),
            training=training_of(config.training, baseline),
        )

    def on_node(self, data: PreparedData, device: str) -> RunSpec:
        """Return this run as a node runs it: its prepared data where that node sees it, on `device`."""
        return self.model_copy(update={"data": data, "training": self.training.model_copy(update={"device": device})})

    @property
    def num_classes(self) -> int:
        """Return the number of classes of the run's labels."""
        return len(self.data.class_names)

    @property
    def epochs(self) -> int:
        """Return the epoch budget: the run's own epochs_max, capped by the search budget."""
        return min(self.params.epochs_max, self.max_epochs)

    @property
    def encoder(self) -> baselines.EncoderRef | None:
        """Return the foundation-model encoder the run embeds or fine-tunes with, by reference (its
        name, constructor overrides, weights file and the digest of that file's bytes); None for a
        baseline without one."""
        entry = baselines.info(self.baseline)
        if not entry.takes_encoder:
            return None
        name = self.model_kwargs.get("encoder", entry.default("encoder"))
        return baselines.EncoderRef.of(name, self.pretrained, self.model_kwargs.get("encoder_arch") or {})

    @property
    def keras(self) -> bool:
        """Return True when the run trains with Keras' semantics (a Keras/TF source, semantics source)."""
        return baselines.uses_keras_semantics(self.baseline, self.training.semantics)

    def logged_params(self) -> dict[str, Any]:
        """Return the params every run of this spec logs: all its training knobs and model options,
        the epoch budget and the protocol options (the compute options among them), and an
        encoder's weights digest."""
        training = self.training
        options = {name: getattr(training, name) for name in PROTOCOL_PARAMS} | training.compute.model_dump()
        protocol = {name: str(value).lower() for name, value in options.items()}
        encoder = self.encoder
        weights = {"encoder_sha256": encoder.sha256} if encoder is not None and encoder.sha256 else {}
        return {**self.params.model_dump(), **self.model_kwargs, "epochs": self.epochs, **protocol, **weights}
