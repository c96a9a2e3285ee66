"""Trained models in MLflow: each retrained fold's network logged with `mlflow.pytorch`, and a
winner's served models, pyfunc models over those networks, registered as `<experiment>-<baseline>`.

Two versions per winner are registered, both pyfunc models (FoldEnsemble) on images as the harness
stores them, returning probabilities under the class names: `winner`, the search fold's network
(the winning trial trained again on its own fold), logged on that fold's run; `ensemble`, the mean
softmax of every fold's network, logged on the ensemble run. Neither is a pickle: a fold's network
is a torch.export program (MLflow's `pt2` format, a graph of torch operations and its weights),
kept as the fold run's `torch_model` and copied into each served model's artifacts; the served
model is logged from code (harness/ensemble_model.py), so both load with MLflow's pickle loading
off (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false), MLflow checking the pt2 archives for pickled
payloads first. A served model needs the harness installed (`mlflow.pyfunc.load_model(
"models:/NAME@winner")`); a fold's torch program needs only torch.
"""

from __future__ import annotations

import contextlib
import re
from importlib import metadata
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import torch
from mlflow.entities import LoggedModelOutput
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR, MLFLOW_TRACKING_URI
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.types import ColSpec, Schema, TensorSpec

from harness import tracking
from harness.environment import MLFLOW_QUIET, environment
from harness.served_model import InputRecipe, ServedFold, served_config

MODEL = "model"  # the name of a run's served model (the pyfunc)
TORCH_MODEL = "torch_model"  # the name of a fold run's network, a torch.export program
ENSEMBLE_CODE = Path(__file__).with_name("ensemble_model.py")  # a served model, as MLflow loads it
MODEL_URI = "model_uri"  # tag on a run: its served model
TORCH_MODEL_URI = "torch_model_uri"  # tag on a fold run: its torch program
RECIPE = "input_recipe"  # the torch program's metadata key holding its InputRecipe
WINNER, ENSEMBLE = "winner", "ensemble"  # the aliases of the registered versions
REGISTERED_DESCRIPTION = (
    "A baseline's winners, one pair of versions per sweep, both pyfunc models (`mlflow.pyfunc.load_model`) "
    "on uint8 RGB images as the harness stores them (N x H x W x 3; smaller edge patches padded as the "
    "harness pads them; anything else refused in one line), returning probabilities under the class names "
    "and the predicted class: the training resize and normalisation are applied inside. `@winner`: the "
    "winning trial trained again on its search fold; `@ensemble`: the mean softmax of the winner's fold "
    "models. Each fold's raw network is a torch.export program under the model's artifacts (and the fold "
    "run's `torch_model`). Neither is a pickle: both load with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false; "
    "they need histo-harness installed. Tags: split, sweep, winning trial, test metrics."
)


def registered_name(experiment: str, baseline: str) -> str:
    """Return the Model Registry name of `baseline`'s models in `experiment`."""
    return re.sub(r"[^\w.-]+", "-", f"{experiment}-{baseline}")


def _requirements() -> list[str]:
    """Return the pins a loaded model needs besides the harness itself."""
    names = ("torch", "torchvision", "timm", "albumentations", "opencv-python-headless", "mlflow", "pydantic")
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Make `uri` MLflow's current tracking URI for the block, then the one before it; yields nothing.

    set_tracking_uri also writes MLFLOW_TRACKING_URI into the environment (for subprocesses): that
    variable is put back as it was too. MLflow is left unpinned afterwards unless the caller had
    pinned it: setting `previous` back would pin it, and the environment would no longer choose."""
    previous = mlflow.get_tracking_uri()
    with environment({MLFLOW_TRACKING_URI.name: uri}, override=True):
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # MLflow's own way to unset it
    if mlflow.get_tracking_uri() != previous:
        mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def _logging_to(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's model functions (they take no URI) at `tracking_uri` for the block, without
    their progress bars."""
    no_bars = {MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name: "false"}
    with _tracking_uri(tracking_uri), environment(MLFLOW_QUIET), environment(no_bars, override=True):
        yield


def _new_model(tracking_uri: str, run_id: str, name: str, tag: str) -> str:
    """Return the id of a new logged model `name` of run `run_id`, in the run's experiment, with
    its params, listed among the run's outputs (MLflow's Models column) and named in its `tag`."""
    tracker = tracking.tracker_for(tracking_uri)
    run = tracker.client.get_run(run_id)
    model = mlflow.initialize_logged_model(
        name=name, source_run_id=run_id, experiment_id=run.info.experiment_id, params=run.data.params
    )
    tracker.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    tracker.set_tags(run_id, {tag: f"models:/{model.model_id}"})
    return model.model_id


def log_fold_model(tracking_uri: str, run_id: str, served: ServedFold) -> str:
    """Log a fold's best network to its run with `mlflow.pytorch` as `torch_model` (signature and
    input example are model inputs), tag the run with its URI; returns that URI."""
    example = served.example_inputs
    if len(example) == 1:
        # torch.export fixes a dimension of size 1; the batch size must stay free.
        example = np.concatenate([example, example])
    with torch.no_grad():
        output = served.module(torch.from_numpy(example)).numpy()
    with _logging_to(tracking_uri):
        info = mlflow.pytorch.log_model(
            served.module,
            name=TORCH_MODEL,
            model_id=_new_model(tracking_uri, run_id, TORCH_MODEL, TORCH_MODEL_URI),
            # torch.export, traced on the example (two images: MLflow keeps the batch size free);
            # a pickled module would run whatever code its file names when loaded.
            serialization_format="pt2",
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=_requirements(),
            metadata={RECIPE: served.recipe.model_dump(mode="json")},
        )
    return info.model_uri


def served_signature(classes: tuple[str, ...]) -> ModelSignature:
    """Return a served model's signature: one probability column per class name and `predicted`.
    No input schema: MLflow would refuse other input with a message that prints the whole array;
    the model checks its input itself, in one line (InputRecipe.stored)."""
    columns: list[ColSpec | TensorSpec] = [ColSpec("float", name) for name in classes]
    return ModelSignature(outputs=Schema([*columns, ColSpec("string", "predicted")]))


def log_served_model(
    tracking_uri: str,
    run_id: str,
    fold_models: dict[int, str],
    stored_examples: np.ndarray,
    classes: tuple[str, ...],
) -> str:
    """Log the mean softmax of `fold_models` (fold -> torch program URI; one fold: that model) as
    the pyfunc model of run `run_id`, its input example stored images; returns the model's URI."""
    with _logging_to(tracking_uri):
        info = mlflow.models.get_model_info(fold_models[min(fold_models)])
        recipe = InputRecipe.model_validate((info.metadata or {})[RECIPE])
        config = served_config(recipe, classes)
        info = mlflow.pyfunc.log_model(
            name=MODEL,
            # Models-from-code: MLflow stores and runs this file to load the model, never a pickle.
            python_model=str(ENSEMBLE_CODE),
            artifacts={f"fold_{k}": uri for k, uri in sorted(fold_models.items())},
            model_config=config,
            model_id=_new_model(tracking_uri, run_id, MODEL, MODEL_URI),
            signature=served_signature(classes),
            input_example=stored_examples,
            pip_requirements=_requirements(),
            metadata=config,
        )
    return info.model_uri


def register(
    tracking_uri: str, name: str, model_uri: str, *, alias: str, tags: dict[str, str], description: str
) -> str:
    """Register logged model `model_uri` (models:/<id>) as a new version of `name` with `tags`,
    point `alias` at it; returns the version."""
    client = tracking.tracker_for(tracking_uri).client
    try:
        client.create_registered_model(name, description=REGISTERED_DESCRIPTION)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    model = client.get_logged_model(model_uri.removeprefix("models:/"))
    # The registry resolves a models:/ source through MLflow's current tracking URI.
    with _logging_to(tracking_uri):
        version = client.create_model_version(
            name, model_uri, run_id=model.source_run_id, tags=tags, description=description, model_id=model.model_id
        )
    client.set_registered_model_alias(name, alias, version.version)
    return version.version
