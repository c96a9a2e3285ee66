"""`harness predict`: a served model (a registered `@winner` or `@ensemble`) over a folder of
images, one row per image: its file, its probability of each class, its predicted class.

Each image is read as the patch cache reads it (RGB, an edge patch padded to the stored size) and
checked against the model's input recipe; a folder, an image or a model the command cannot use is
one line naming it (InputError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, cast

import mlflow
import numpy as np
import pandas as pd
from mlflow.environment_variables import MLFLOW_TRACKING_URI
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel
from PIL import UnidentifiedImageError

from harness.data.cache import decode_rgb
from harness.environment import NO_PICKLED_MODELS, environment
from harness.errors import InputError
from harness.locking import sqlite_path
from harness.served_model import InputMismatch, InputRecipe

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
CHUNK = 4096  # images decoded and predicted at a time, so a folder of any size fits in memory


def image_files(folder: Path) -> list[Path]:
    """Return the images under `folder` (searched recursively), sorted; raises InputError when the
    folder is missing or holds none."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{folder}: no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    return files


def load_served(model_uri: str, tracking_uri: str) -> tuple[PyFuncModel, InputRecipe]:
    """Return the served model at `model_uri` (resolved in `tracking_uri`), loaded with MLflow's
    pickle loading off (unless the user opted in), and its input recipe; raises InputError when it
    cannot be loaded or is no served model of the harness."""
    database = sqlite_path(tracking_uri)
    if model_uri.startswith(("models:/", "runs:/")) and database is not None and not database.is_file():
        # MLflow would create an empty store there and then say the model does not exist.
        raise InputError(f"{tracking_uri}: no MLflow store there (run `harness sweep` first, or pass --tracking-uri)")
    with environment({MLFLOW_TRACKING_URI.name: tracking_uri}, override=True), environment(NO_PICKLED_MODELS):
        try:
            model = mlflow.pyfunc.load_model(model_uri)
        except (MlflowException, OSError) as exc:
            raise InputError(f"{model_uri}: {str(exc).strip().splitlines()[0]}") from None
    config = model.metadata.metadata or {}
    if "recipe" not in config:
        raise InputError(f"{model_uri}: no input recipe in its metadata (expected a served model of the harness)")
    return model, InputRecipe.model_validate(config["recipe"])


def _stored(path: Path, recipe: InputRecipe) -> np.ndarray:
    """Return the image at `path` as the harness stores it; raises InputError naming the file."""
    try:
        pixels = decode_rgb(path.read_bytes())
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable image ({type(exc).__name__})") from None
    try:
        return recipe.stored(pixels[None])[0]
    except InputMismatch:
        h, w = pixels.shape[:2]
        raise InputError(f"{path}: a {h} x {w} image; the model expects {recipe.expected()}") from None


def _chunks(files: list[Path]) -> Iterator[list[Path]]:
    for start in range(0, len(files), CHUNK):
        yield files[start : start + CHUNK]


def predict_folder(model_uri: str, folder: Path, tracking_uri: str) -> pd.DataFrame:
    """Return the served model's predictions for every image under `folder`: `file` (relative to
    `folder`), one probability column per class name, `predicted`."""
    files = image_files(folder)
    model, recipe = load_served(model_uri, tracking_uri)
    frames = []
    for chunk in _chunks(files):
        images = np.stack([_stored(path, recipe) for path in chunk])
        frame = cast(pd.DataFrame, model.predict(images))  # FoldEnsemble.predict's
        frames.append(frame.assign(file=[p.relative_to(folder).as_posix() for p in chunk]))
    predictions = pd.concat(frames, ignore_index=True)
    return predictions[["file", *[c for c in predictions.columns if c != "file"]]]
