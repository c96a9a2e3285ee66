"""Pydantic models of experiment and search-space files, validated once at the edge.

Relative paths in an experiment file resolve against the working directory, like the CLI's own
arguments. Every error names the file, the key and what was expected (see `load_experiment`).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

import baselines
from harness.data.augmentations import canonical_name
from harness.data.datasets import DatasetSpec, UnknownDatasetError, dataset
from harness.data.splits import ProtocolSpec
from harness.errors import InputError
from harness.locking import JOURNAL_SCHEME, journal_path
from harness.table_layouts import TableLayout

# Package data: one YAML per baseline, installed with the package (editable or not).
SEARCH_SPACES_DIR = Path(__file__).resolve().parent / "search_spaces"
Metric = Literal["val_accuracy", "val_balanced_accuracy", "val_auc", "val_f1", "val_loss"]


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- search spaces -------------------------------------------------------------------------------


class Distribution(Strict):
    """One searched hyperparameter; bounds are inclusive, as in Optuna."""

    type: Literal["loguniform", "uniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical distribution needs a non-empty `choices` list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.type} distribution needs `low` <= `high`")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError("a loguniform distribution needs `low` > 0")
        return self

    def values(self) -> list[Any] | None:
        """Return the finite set of values this distribution can take, or None if continuous."""
        return list(self.choices or []) if self.type == "categorical" else None

    @property
    def bounds(self) -> tuple[float, float]:
        """Return (low, high) of a range; validation gives every distribution but categorical both."""
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} distribution has no bounds")
        return self.low, self.high

    def contains(self, value: Any) -> bool:
        """Return True when `value` is a point this distribution can propose."""
        if self.type == "categorical":
            return value in (self.choices or [])
        low, high = self.bounds
        if not isinstance(value, (int, float)) or not low <= value <= high:
            return False
        step = self.step or (1 if self.type == "int" else None)
        return step is None or abs((value - low) / step - round((value - low) / step)) < 1e-9


class ResourcesSpec(Strict):
    """What one trial asks Ray for; a fractional GPU lets several trials share one.

    Only the keys a file sets override a default (see `ExperimentConfig.trial_resources`).
    """

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    def updated(self, override: ResourcesSpec) -> ResourcesSpec:
        """Return these resources with the keys `override` was given explicitly."""
        return self.model_copy(update=override.model_dump(include=override.model_fields_set))


class SearchSpace(Strict):
    """search_spaces/<baseline>.yaml: the published recipe, fixed defaults, the searched ranges, and
    the resources one trial of this baseline needs on a GPU node."""

    baseline: str
    recipe: dict[str, Any] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Distribution] = Field(default_factory=dict)
    resources: ResourcesSpec = ResourcesSpec()

    def keys(self) -> set[str]:
        """Return every hyperparameter this space sets."""
        return set(self.recipe) | set(self.fixed) | set(self.search)

    def narrowed(self, ranges: dict[str, Distribution]) -> SearchSpace:
        """Return the space with `ranges` replacing (or adding) searched distributions."""
        return self.model_copy(
            update={
                "search": {**self.search, **ranges},
                "fixed": {k: v for k, v in self.fixed.items() if k not in ranges},
            }
        )

    def pinned(self, overrides: dict[str, Any]) -> SearchSpace:
        """Return the space with `overrides` moved from `search` into `fixed`."""
        return self.model_copy(
            update={
                "fixed": {**self.fixed, **overrides},
                "search": {k: v for k, v in self.search.items() if k not in overrides},
            }
        )


# --- training parameters -------------------------------------------------------------------------


class TrainParams(Strict):
    """The training knobs of one run; every other hyperparameter is a model keyword argument."""

    optimizer: Literal["adam", "adamw", "adamax", "sgd", "adagrad"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(64, ge=1)
    epochs_max: int = Field(10, ge=1)
    lr_decay: Literal["none", "keras_time_based", "step"] = "none"
    lr_step_epochs: int = Field(10, ge=1)
    lr_gamma: float = Field(0.9, gt=0, le=1)
    class_weights: Literal["none", "inverse_max"] = "inverse_max"
    # A name of harness/data/augmentations.py.
    augment: str = "none"
    rotation: Literal["flip180", "small15", "free"] = "flip180"
    noise_std: float = Field(0.0, ge=0)
    intensity: float = Field(0.0, ge=0, lt=1)
    input_size: int | tuple[int, int] = 50
    normalisation: Literal["unit", "half", "imagenet"] = "unit"
    lambda_dice: float = Field(1.0, ge=0)
    roi_target: Literal["hard", "soft"] = "hard"

    @field_validator("augment")
    @classmethod
    def _known_augmentation(cls, name: str) -> str:
        return canonical_name(name)

    @field_validator("input_size")
    @classmethod
    def _positive(cls, size: int | tuple[int, int]) -> int | tuple[int, int]:
        if min((size, size) if isinstance(size, int) else size) < 16:
            raise ValueError("input_size must be at least 16 pixels (one side, or [height, width])")
        return size

    @property
    def input_hw(self) -> tuple[int, int]:
        """Return the input size as (height, width)."""
        return (self.input_size, self.input_size) if isinstance(self.input_size, int) else self.input_size


TRAIN_KEYS = frozenset(TrainParams.model_fields)


def split_point(point: dict[str, Any]) -> tuple[TrainParams, dict[str, Any]]:
    """Split a flat hyperparameter point into TrainParams and the model's keyword arguments."""
    train = TrainParams(**{k: v for k, v in point.items() if k in TRAIN_KEYS})
    return train, {k: v for k, v in point.items() if k not in TRAIN_KEYS}


# --- experiment file -----------------------------------------------------------------------------


class BaselineSpec(Strict):
    """A baseline to sweep: its registry name, an optional local weights file, pinned hyperparameters,
    ranges that replace those of its search space, and resources that replace its defaults."""

    name: str
    pretrained: Path | None = None
    fixed: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Distribution] = Field(default_factory=dict)
    resources: ResourcesSpec = ResourcesSpec()

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        try:
            baselines.info(name)
        except baselines.UnknownBaselineError as exc:
            raise ValueError(str(exc)) from None
        return name

    @field_validator("pretrained")
    @classmethod
    def _weights_file(cls, path: Path | None) -> Path | None:
        # Its first bytes, here: a file that is no weights file is refused before any trial starts.
        return baselines.check_weights_file(path) if path is not None else None


class WarmStartSpec(Strict):
    """Start from the best points of a previous sweep of the same experiment (its Optuna studies)."""

    sweep: str = "latest"
    top: int = Field(3, ge=1)


class SearchSpec(Strict):
    """The search: trials per baseline, the epoch cap ASHA prunes inside, the objective, the Optuna
    sampler and where its study is kept, retries, and the fold retrain after the search."""

    trials: int = Field(8, ge=1)
    max_epochs: int = Field(10, ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    metric: Metric = "val_accuracy"
    sampler: Literal["tpe", "random", "gp", "qmc", "bruteforce"] = "tpe"
    seed: int = 0
    max_concurrent: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)
    optuna_storage: str | None = None
    warm_start: WarmStartSpec | None = None
    retrain: Literal["all_folds", "none"] = "all_folds"
    # The fold retrain's epoch cap (None: max_epochs, the search's): a shorter retrain is logged
    # as each fold run's `epochs` param, and the leaderboard's protocol column says it.
    retrain_epochs: int | None = Field(None, ge=1)
    # Log each retrained fold's model and the winner's fold ensemble as MLflow models, and register
    # both as `<experiment>-<baseline>` (aliases winner and ensemble).
    register_models: bool = True
    # Suggestions in fixed batches and stopping decisions at synchronous points, so two sweeps with
    # the same seed and data write the same leaderboard (on CPUs of one model) whatever order trials
    # finish in.
    reproducible: bool = False

    @field_validator("optuna_storage")
    @classmethod
    def _journal_file(cls, url: str | None) -> str | None:
        # Every node opens the same log file, so its path cannot depend on a process's folder.
        path = journal_path(url) if url else None
        if path is not None and (not path.is_absolute() or str(url).endswith("/")):
            raise ValueError(f"a journal storage is {JOURNAL_SCHEME}/<absolute path of its log file>")
        return url

    @model_validator(mode="after")
    def _grace_within_budget(self) -> SearchSpec:
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period ({self.grace_period}) must not exceed max_epochs ({self.max_epochs})")
        return self

    @model_validator(mode="after")
    def _retrain_within_budget(self) -> SearchSpec:
        if self.retrain_epochs is not None and self.retrain_epochs > self.max_epochs:
            raise ValueError(f"retrain_epochs ({self.retrain_epochs}) must not exceed max_epochs ({self.max_epochs})")
        return self

    @model_validator(mode="after")
    def _reproducible_batches(self) -> SearchSpec:
        if self.reproducible and self.max_concurrent is None:
            raise ValueError("reproducible: true needs max_concurrent, the number of trials suggested in each batch")
        if self.reproducible and self.reduction_factor != int(self.reduction_factor):
            raise ValueError(
                f"reproducible: true needs a whole reduction_factor (rungs at whole epochs), "
                f"got {self.reduction_factor:g}"
            )
        return self

    @property
    def retrain_budget(self) -> int:
        """Return the fold retrain's epoch cap: retrain_epochs, else max_epochs."""
        return self.retrain_epochs or self.max_epochs

    @property
    def mode(self) -> Literal["min", "max"]:
        """Return the direction of the objective."""
        return "min" if self.metric == "val_loss" else "max"


class ComputeSpec(Strict):
    """How a run computes, not what: numeric precision and memory layout on the device. Each is
    logged as a param; the defaults keep a CPU run bit for bit what it was."""

    # bf16: autocast to bfloat16; fp16: autocast to float16 with a gradient scaler.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Convolution weights and image batches in NHWC (bags stay as they are).
    channels_last: bool = False
    # cuDNN picks the fastest convolution per input shape (CUDA only; not bit-reproducible).
    cudnn_benchmark: bool = False
    # Training batches: `per_image` (a DataLoader, albumentations per image), `batched` (the fold's
    # patches on the device, augmented a batch at a time: harness/data/batched.py), or `auto`:
    # batched on a CUDA device when the run's augmentation has a batched form and the fold's
    # training patches fit `device_patch_share` of the device's memory. A batched run validates
    # from the device too when the training and validation patches fit that share together.
    loader: Literal["auto", "per_image", "batched"] = "auto"
    device_patch_share: float = Field(0.25, gt=0, le=1)
    # Worker processes that decode and augment the per-image path's batches (pinned memory on
    # CUDA). `auto`: none on the CPU, where the trial's threads train and a run stays bit for bit
    # what it was; on CUDA as many as the trial's CPUs, up to 4.
    loader_workers: int | Literal["auto"] = Field("auto", ge=0)


class TrainingSpec(Strict):
    """Run-level settings that are not hyperparameters."""

    patience: int = Field(5, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_batch_size: int = Field(512, ge=1)
    # `source`: each baseline trains with the semantics of the framework its seed ran (Keras'
    # BatchNorm, initialisers, optimisers, decay, loss clipping and resizing; BASELINES.md §0.5);
    # `torch`: every baseline takes plain PyTorch defaults.
    semantics: Literal["source", "torch"] = "source"
    # A protocol option, not a model change: recompute BatchNorm statistics on training batches
    # (Dropout off, as in evaluation) before each evaluation; harness/bn_recalibration.py says why.
    bn_recalibration: bool = False
    # A sweep's trial saves what resume needs every this many epochs (and its last result when
    # done); a trial resumed between two saves trains the epochs since the last one again.
    checkpoint_every: int = Field(1, ge=1)
    compute: ComputeSpec = ComputeSpec()


# The layouts of `harness leaderboard --table`: 001's Tables I-IV, the IDC and BreakHis comparisons,
# and a summary for any experiment.
# The reproduced numbers `harness leaderboard --check` holds against published ones.
CHECKED_METRICS = (
    "val_accuracy",
    "val_auc",
    "class_auc",
    "confusion",
    "miou",
    "test_accuracy",
    "test_accuracy_single",
    "test_accuracy_ensemble",
    "test_balanced_accuracy",
    "test_auc",
    "test_f1",
    "test_precision",
    "test_recall",
    "patient_accuracy",
)


# The trivial models an experiment can fit on its folds as every table's floor.
Floor = Literal["majority", "colour_forest"]


class LeaderboardSpec(Strict):
    """The tables `harness leaderboard` writes for this experiment, and `--check`'s tolerances:
    the largest absolute difference from a published number, on the 0-1 scale (0.05 = 5 points),
    under `default` or a metric's own name."""

    tables: list[TableLayout] = Field(["summary"], min_length=1)
    tolerance: dict[str, float] = Field(default_factory=lambda: {"default": 0.05})

    @field_validator("tolerance")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - {"default", *CHECKED_METRICS})
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; expected default or one of: {', '.join(CHECKED_METRICS)}")
        negative = sorted(k for k, v in value.items() if v < 0)
        if negative:
            raise ValueError(f"tolerance of {negative[0]!r} must be at least 0")
        return {"default": 0.05, **value}

    def tolerance_of(self, metric: str) -> float:
        """Return the tolerance of `metric` (its own, else the default)."""
        return self.tolerance.get(metric, self.tolerance["default"])


class ExperimentConfig(Strict):
    """One experiment file: a dataset, a protocol, baselines and a search budget."""

    # A folder under output_dir (Tune's storage, the tables), an MLflow experiment and Optuna study names.
    name: str
    dataset: DatasetSpec
    protocol: ProtocolSpec = ProtocolSpec()
    baselines: list[BaselineSpec] = Field(min_length=1)
    search: SearchSpec = SearchSpec()
    resources: ResourcesSpec = ResourcesSpec()
    training: TrainingSpec = TrainingSpec()
    leaderboard: LeaderboardSpec = LeaderboardSpec()
    # Trivial models fitted on the same folds, shown as every table's floor; [] turns them off.
    floors: list[Floor] = Field(default_factory=lambda: list(get_args(Floor)))
    tracking_uri: str | None = None
    output_dir: Path = Path("results")
    storage_path: Path | None = None
    # Each baseline's search-space file as read once (at load): what a sweep uses and what its
    # --resume fingerprint covers, so an edited file between a killed sweep and --resume is seen.
    _space_files: dict[str, SearchSpace] = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, name: str) -> str:
        # '.' and '..' match the characters allowed but name no folder of their own: '..' put Tune's
        # storage one level above output_dir.
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
            raise ValueError("expected one folder name of letters, digits, '_', '.' and '-', not '.' or '..'")
        return name

    @field_validator("baselines", mode="before")
    @classmethod
    def _names_as_entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _unique_baselines(self) -> ExperimentConfig:
        names = [b.name for b in self.baselines]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"baselines listed twice: {', '.join(duplicates)}")
        return self

    @property
    def results_dir(self) -> Path:
        """Return the absolute folder of this experiment's tables."""
        return (self.output_dir / self.name).resolve()

    def resolved_storage_path(self) -> Path:
        """Return the absolute folder where Ray Tune keeps this experiment's sweeps and checkpoints."""
        return (self.storage_path or self.output_dir / self.name / "ray").resolve()

    def resolved_optuna_storage(self) -> str:
        """Return the Optuna storage's URL (an RDB URL or a journal file's): the configured one, or a
        SQLite file beside the MLflow store."""
        return self.search.optuna_storage or f"sqlite:///{(self.output_dir / 'optuna.db').resolve()}"

    def space_file(self, baseline: str) -> SearchSpace:
        """Return `baseline`'s search-space file as this config read it (at load, or on first use)."""
        if baseline not in self._space_files:
            self._space_files[baseline] = load_search_space(baseline)
        return self._space_files[baseline]

    def baseline_space(self, baseline: str) -> SearchSpace:
        """Return the search space a sweep uses for `baseline`: its file's, with the experiment's
        ranges and pins."""
        spec = next(b for b in self.baselines if b.name == baseline)
        return self.space_file(baseline).narrowed(spec.search).pinned(spec.fixed)

    def baseline_spaces(self) -> dict[str, SearchSpace]:
        """Return every baseline's search space as a sweep uses it, in the experiment's order."""
        return {b.name: self.baseline_space(b.name) for b in self.baselines}

    def trial_resources(self, baseline: str, default: ResourcesSpec) -> ResourcesSpec:
        """Return what one trial of `baseline` asks for: its search space's default, then the
        experiment's `resources`, then the baseline entry's own `resources`."""
        entry = next(b for b in self.baselines if b.name == baseline)
        return default.updated(self.resources).updated(entry.resources)

    def resolved_tracking_uri(self) -> str:
        """Return the MLflow URI: the configured one, or an absolute SQLite file under output_dir."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{(self.output_dir / 'mlflow.db').resolve()}"


# --- loading -------------------------------------------------------------------------------------


def _key(loc: tuple[Any, ...]) -> str:
    parts = []
    for item in loc:
        parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
    return "".join(parts).lstrip(".")


def _describe(error: ErrorDetails, prefix: tuple[Any, ...] = ()) -> str:
    """Return "key 'a.b[0]' = value: what was expected" for one pydantic error."""
    loc = prefix + tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = _key(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"key '{key}': unknown key"
    if error["type"] == "missing":
        return f"key '{key}': required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" = {value!r}"
    return f"key '{key}'{shown}: {message}"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"{path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _validate(model: type[Strict], data: dict[str, Any], path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"{path}: {_describe(errors[0])}{more}") from None


def search_space_path(name: str) -> Path:
    """Return the file that holds baseline `name`'s search space."""
    return SEARCH_SPACES_DIR / f"{name}.yaml"


def load_search_space(name: str) -> SearchSpace:
    """Return the validated search space of baseline `name`."""
    path = search_space_path(name)
    space = _validate(SearchSpace, _read_yaml(path), path)
    if space.baseline != name:
        raise InputError(f"{path}: key 'baseline' = {space.baseline!r}: expected {name!r}, the file's own name")
    entry = baselines.info(name)
    unknown = space.keys() - TRAIN_KEYS - entry.model_kwargs()
    if unknown:
        raise InputError(
            f"{path}: keys {', '.join(sorted(unknown))} are neither training parameters nor options of {name}"
        )
    _check_choices(space.search, "search", path)
    return space


def _check_choices(search: dict[str, Distribution], section: str, path: Path) -> None:
    """Raise InputError naming the first choice of a searched training parameter that is not one
    of its values (an unknown augmentation, say), before any trial samples it."""
    for key, distribution in search.items():
        for value in distribution.values() or [] if key in TRAIN_KEYS else []:
            try:
                TrainParams.model_validate({key: value})
            except ValidationError as exc:
                raise InputError(f"{path}: {_describe(exc.errors()[0], (section,))}") from None


def _check_baseline(spec: BaselineSpec, index: int, space: SearchSpace, path: Path, sampler: str) -> None:
    for section in ("fixed", "search"):
        unknown = set(getattr(spec, section)) - space.keys()
        if unknown:
            raise InputError(
                f"{path}: key 'baselines[{index}].{section}.{sorted(unknown)[0]}': not a hyperparameter of "
                f"{spec.name} (its keys: {', '.join(sorted(space.keys()))})"
            )
    _check_choices(spec.search, f"baselines[{index}].search", path)
    where = f"{path}: key 'baselines[{index}].fixed"
    pinned = space.narrowed(spec.search).pinned(spec.fixed)
    if sampler == "bruteforce":
        continuous = sorted(
            k for k, d in pinned.search.items() if d.type == "loguniform" or (d.type == "uniform" and d.step is None)
        )
        if continuous:
            raise InputError(
                f"{path}: key 'search.sampler' = 'bruteforce': {spec.name} searches {continuous[0]} over a "
                "continuous range; brute force needs categorical, int or stepped ranges "
                f"(set baselines[{index}].search.{continuous[0]})"
            )
    try:
        split_point({**pinned.recipe, **pinned.fixed})
    except ValidationError as exc:
        raise InputError(f"{path}: {_describe(exc.errors()[0], ('baselines', index, 'fixed'))}") from None
    _check_encoder(spec, index, pinned, path)
    _, freeze_values = _point_values(pinned, "freeze", "none")
    if spec.pretrained is None and any(v != "none" for v in freeze_values):
        raise InputError(
            f"{where}.freeze': {spec.name} has no pretrained weights file (baselines[{index}].pretrained), "
            "so only freeze: none makes sense; pin it or give a weights file"
        )


def _point_values(space: SearchSpace, key: str, default: Any) -> tuple[str, list[Any]]:
    """Return where `key` is set in a pinned space ("search" or "fixed") and every value a trial's
    point can give it: a categorical's choices, an int range's ends (the highest step it reaches)."""
    searched = space.search.get(key)
    if searched is None:
        return "fixed", [space.fixed.get(key, space.recipe.get(key, default))]
    if searched.type != "int":
        return "search", searched.values() or []
    low, high = (int(bound) for bound in searched.bounds)
    step = int(searched.step or 1)
    return "search", [low, low + (high - low) // step * step]


def _check_encoder(spec: BaselineSpec, index: int, pinned: SearchSpace, path: Path) -> None:
    """Raise InputError for an encoder that is neither a preset nor a timm architecture, constructor
    overrides (`encoder_arch`) timm cannot build it with, or a fine-tune `blocks` value outside 0 to
    the encoder's depth, before any trial builds it (each trial would fail on its own)."""
    entry = baselines.info(spec.name)
    if not entry.takes_encoder:
        return
    where = f"{path}: key 'baselines[{index}]"
    name_section, names = _point_values(pinned, "encoder", entry.default("encoder"))
    arch_section, archs = _point_values(pinned, "encoder_arch", None)
    archs = [{} if arch is None else arch for arch in archs]  # the search spaces fix null: no overrides
    blocks_section, blocks = _point_values(pinned, "blocks", 0) if "blocks" in pinned.keys() else ("fixed", [])
    for name, arch in itertools.product(names, archs):
        name_key = f"{where}.{name_section}.encoder'"
        depth = _built_depth(name_key, f"{where}.{arch_section}.encoder_arch'", name, arch)
        if depth is None:  # only a fine-tune needs blocks
            if blocks:
                raise InputError(
                    f"{name_key} = {name!r}: timm's architecture lists no blocks or stages, so {spec.name} "
                    "cannot train its last ones; pick a ViT or a CNN with stages"
                )
            continue
        wrong = [v for v in blocks if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= depth]
        if wrong:
            raise InputError(
                f"{where}.{blocks_section}.blocks' = {wrong[0]!r}: encoder {name!r} has {depth} blocks; "
                f"set baselines[{index}].{blocks_section}.blocks to whole numbers from 0 (all) to {depth}"
            )


def _built_depth(name_key: str, arch_key: str, name: Any, arch: Any) -> int | None:
    """Return the depth of encoder `name` built with overrides `arch` on the meta device (None when
    it has no blocks: only a fine-tune needs them); raise InputError naming the key at fault."""
    if not isinstance(arch, dict):
        raise InputError(f"{arch_key} = {arch!r}: expected a mapping of timm constructor arguments")
    try:
        baselines.resolved_preset(name, **arch)
    except baselines.UnknownEncoderError as exc:
        raise InputError(f"{name_key} = {name!r}: {exc}") from None
    except ValueError as exc:  # a recipe value (embedding, mean, std) of the overrides
        raise InputError(f"{arch_key} = {arch!r}: {exc}") from None
    try:
        return baselines.encoder_depth(name, **arch)
    except baselines.EncoderWithoutBlocksError:
        return None
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:  # timm's own checks of its arguments
        raise InputError(f"{arch_key} = {arch!r}: timm cannot build {name!r} with it ({exc})") from None


def _fill_protocol_keys(data: dict[str, Any]) -> None:
    """Give the dataset keys a published protocol fixes (eva's BreakHis: magnification 40, label eva)
    the protocol's values where the file leaves them out, so the validated config says what runs."""
    spec, protocol = data.get("dataset"), data.get("protocol")
    if not isinstance(spec, dict) or not isinstance(protocol, dict):
        return
    try:
        entry = dataset(str(spec.get("name"))).protocols.get(str(protocol.get("name")))
    except UnknownDatasetError:
        return  # validation names the dataset
    for key, value in entry.fixes.items() if entry else ():
        spec.setdefault(key, value)


def _check_protocol(config: ExperimentConfig, path: Path) -> None:
    """Raise InputError when the protocol is not one of the dataset's, when a key it fixes has
    another value, or when a label set that belongs to a published protocol is used without it."""
    spec, protocol = config.dataset, config.protocol
    entry = dataset(spec.name)
    where = f"{path}: key 'protocol.name' = {protocol.name!r}"
    if spec.label in entry.protocols and protocol.name != spec.label:
        raise InputError(
            f"{path}: key 'dataset.label' = {spec.label!r}: the class set of protocol {spec.label}; "
            f"set protocol.name: {spec.label}"
        )
    if protocol.name == "patient":
        return
    if protocol.name not in entry.protocols:
        known = ", ".join(["patient", *sorted(entry.protocols)])
        raise InputError(f"{where}: not a protocol of dataset {spec.name} (its protocols: {known})")
    named = entry.protocols[protocol.name]
    for key, value in named.fixes.items():
        if getattr(spec, key) != value:
            raise InputError(
                f"{path}: key 'dataset.{key}' = {getattr(spec, key)!r}: protocol {protocol.name} of "
                f"{spec.name} takes {value!r} ({named.description})"
            )
    if "test_fraction" in protocol.model_fields_set:
        raise InputError(
            f"{path}: key 'protocol.test_fraction': protocol {protocol.name} fixes its test set "
            f"({named.description}); leave test_fraction out"
        )


def _check_dataset_fits(config: ExperimentConfig, path: Path) -> None:
    traits = config.dataset.traits()
    for i, spec in enumerate(config.baselines):
        entry = baselines.info(spec.name)
        where = f"{path}: key 'baselines[{i}].name' = {spec.name!r}"
        if entry.needs_roi and traits.mask_source == "none":
            masks = "roi_dir" in dataset(config.dataset.name).options
            hint = " (set dataset.roi_dir, or roi_fallback: tissue)" if masks else ""
            raise InputError(
                f"{where}: {spec.name} trains with an RoI mask per image (loss {entry.loss}) "
                f"and dataset {config.dataset.name} has no RoI masks{hint}"
            )
        # A probe's embeddings are computed from the images an image baseline would take.
        kind = "image" if entry.input_kind == "embedding" else entry.input_kind
        if kind not in traits.input_kinds:
            raise InputError(
                f"{where}: {spec.name} takes {kind}s of patches and dataset "
                f"{config.dataset.name} gives {' or '.join(sorted(traits.input_kinds))}s"
            )


def load_experiment(path: Path, **overrides: Any) -> ExperimentConfig:
    """Load and validate an experiment file; `overrides` (e.g. dataset_root) come from the CLI.

    Raises InputError with one line naming the file, the key, the value and what was expected.
    """
    data = _read_yaml(path)
    dataset = data.get("dataset")
    if isinstance(dataset, dict):
        if overrides.get("dataset_root") is not None:
            dataset["root"] = str(overrides["dataset_root"])
        if overrides.get("roi_dir") is not None:
            # Real masks replace any fallback the file chose.
            dataset["roi_dir"] = str(overrides["roi_dir"])
            dataset.pop("roi_fallback", None)
    for key in ("tracking_uri", "output_dir", "storage_path"):
        if overrides.get(key) is not None:
            data[key] = str(overrides[key])
    _fill_protocol_keys(data)
    config = _validate(ExperimentConfig, data, path)
    _check_protocol(config, path)
    _check_dataset_fits(config, path)
    for i, spec in enumerate(config.baselines):
        _check_baseline(spec, i, config.space_file(spec.name), path, config.search.sampler)
    return config
