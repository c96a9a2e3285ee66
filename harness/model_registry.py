"""Trained models in MLflow: each retrained fold's best model logged with `mlflow.pytorch`, a
winner's fold ensemble as one pyfunc model, and both registered as `<experiment>-<baseline>`.

The fold model of the search fold is the winning trial trained again on its own fold: it is
registered as the `winner` version; the ensemble as the `ensemble` version. Neither is a pickle:
a fold model is a torch.export program (MLflow's `pt2` format, a graph of torch operations and
its weights), the ensemble is logged from code (harness/ensemble_model.py), so both load with
MLflow's pickle loading off (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false), MLflow checking the pt2
archives for pickled payloads first. The ensemble needs the harness installed
(`mlflow.pyfunc.load_model("models:/NAME@ensemble")`); a fold model needs only torch.
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
from harness.served_model import InputRecipe, ServedFold

MODEL = "model"  # the name of a run's logged model
ENSEMBLE_CODE = Path(__file__).with_name("ensemble_model.py")  # the ensemble, as MLflow loads it
MODEL_URI = "model_uri"  # tag on a fold or ensemble run: its logged model
RECIPE = "input_recipe"  # the fold model's metadata key holding its InputRecipe
WINNER, ENSEMBLE = "winner", "ensemble"  # the aliases of the registered versions
REGISTERED_DESCRIPTION = (
    "A baseline's winners, one pair of versions per sweep. `@winner`: the winning trial trained again "
    "on its search fold, a torch.export program (`mlflow.pytorch.load_model` gives its module) from uint8 "
    "model inputs to softmax probabilities; it needs only torch. `@ensemble`: the mean softmax of the "
    "winner's fold models, a pyfunc model logged from code (`mlflow.pyfunc.load_model`) on uint8 images "
    "as the harness stores them (N x H x W x 3); it needs histo-harness installed. Neither is a pickle: "
    "both load with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false. Tags: split, sweep, winning trial, test metrics."
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


def _new_model(tracking_uri: str, run_id: str) -> str:
    """Return the id of a new logged model of run `run_id`, in the run's experiment, with its
    params, listed among the run's outputs (MLflow's Models column) and named in its MODEL_URI tag."""
    tracker = tracking.tracker_for(tracking_uri)
    run = tracker.client.get_run(run_id)
    model = mlflow.initialize_logged_model(
        name=MODEL, source_run_id=run_id, experiment_id=run.info.experiment_id, params=run.data.params
    )
    tracker.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    tracker.set_tags(run_id, {MODEL_URI: f"models:/{model.model_id}"})
    return model.model_id


def log_fold_model(tracking_uri: str, run_id: str, served: ServedFold) -> str:
    """Log a fold's best model to its run with `mlflow.pytorch` (signature and input example are
    model inputs), tag the run with the model's URI; returns that URI."""
    example = served.recipe.model_inputs(served.stored_examples)
    if len(example) == 1:
        # torch.export fixes a dimension of size 1; the batch size must stay free.
        example = np.concatenate([example, example])
    with torch.no_grad():
        output = served.module(torch.from_numpy(example)).numpy()
    with _logging_to(tracking_uri):
        info = mlflow.pytorch.log_model(
            served.module,
            name=MODEL,
            model_id=_new_model(tracking_uri, run_id),
            # torch.export, traced on the example (two images: MLflow keeps the batch size free);
            # a pickled module would run whatever code its file names when loaded.
            serialization_format="pt2",
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=_requirements(),
            metadata={RECIPE: served.recipe.model_dump(mode="json")},
        )
    return info.model_uri


def ensemble_signature(recipe: InputRecipe, classes: int) -> ModelSignature:
    """Return the ensemble's signature: stored uint8 images in, `prob_<class>` and `pred` out."""
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, *recipe.stored_hw, 3))])
    columns: list[ColSpec | TensorSpec] = [ColSpec("float", f"prob_{c}") for c in range(classes)]
    outputs = Schema([*columns, ColSpec("long", "pred")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_ensemble_model(
    tracking_uri: str, run_id: str, fold_models: dict[int, str], stored_examples: np.ndarray, classes: int
) -> str:
    """Log the mean softmax of `fold_models` (fold -> model URI) as one pyfunc model of the
    ensemble run, its input example stored images; returns the model's URI."""
    with _logging_to(tracking_uri):
        info = mlflow.models.get_model_info(fold_models[min(fold_models)])
        recipe = InputRecipe.model_validate((info.metadata or {})[RECIPE])
        info = mlflow.pyfunc.log_model(
            name=MODEL,
            # Models-from-code: MLflow stores and runs this file to load the model, never a pickle.
            python_model=str(ENSEMBLE_CODE),
            artifacts={f"fold_{k}": uri for k, uri in sorted(fold_models.items())},
            model_config={"recipe": recipe.model_dump(mode="json")},
            model_id=_new_model(tracking_uri, run_id),
            signature=ensemble_signature(recipe, classes),
            input_example=stored_examples,
            pip_requirements=_requirements(),
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
