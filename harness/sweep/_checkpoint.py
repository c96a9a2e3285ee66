"""A trial's checkpoint file (`trial.pt`): plain data only (tensors, numbers, strings, lists,
tuples and dicts), written atomically and read back with `torch.load(weights_only=True)`.

The file lies in Tune's storage path, which on a cluster is shared storage: whoever can write
there could plant a file, and a pickle of arbitrary objects runs code when it is loaded. Torch's
restricted unpickler builds nothing but plain data, so a planted object is refused, never built.
The training state is turned into plain data here and back (`TrainState` holds NumPy random
states, data frames and dataclasses, which that unpickler refuses).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.atomic import replacing
from harness.errors import InputError
from harness.evaluation import Evaluation
from harness.train import BestEpoch, EpochReport, TrainState

CHECKPOINT_FILE = "trial.pt"
# The format of the file, so a checkpoint of another layout is refused by name rather than misread.
FORMAT = "histo-harness trial checkpoint 1"
# EpochReport's fields a checkpoint keeps: the evaluations and the snapshot are never saved.
_REPORT_FIELDS = ("epoch", "train_loss", "val", "best_epoch", "best_val", "done", "param_counts")


@dataclass(frozen=True)
class TrialCheckpoint:
    """What a trial saves: its MLflow run, what it reported, and its training state (None once the
    trial is done: only its last result is heard again then)."""

    run_id: str
    state: TrainState | None
    metrics: dict[str, Any]


def _scalars(values: dict[str, Any]) -> dict[str, Any]:
    """Return `values` with NumPy scalars as Python ones (the restricted unpickler refuses them)."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in values.items()}


def _plain_frame(frame: pd.DataFrame) -> dict[str, Any]:
    """Return a data frame as its columns in order: numeric ones as tensors, others as lists."""
    columns = {}
    for name, column in frame.items():
        numeric = pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)
        columns[str(name)] = torch.from_numpy(column.to_numpy().copy()) if numeric else column.tolist()
    return columns


def _frame(columns: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in columns.items()})


def _plain_evaluation(evaluation: Evaluation) -> dict[str, Any]:
    # A validation evaluation has no map galleries (only the test set's has): nothing else to keep.
    return {
        "metrics": _scalars(evaluation.metrics),
        "confusion": torch.from_numpy(np.ascontiguousarray(evaluation.confusion)),
        "predictions": _plain_frame(evaluation.predictions),
    }


def _evaluation(plain: dict[str, Any]) -> Evaluation:
    return Evaluation(plain["metrics"], plain["confusion"].numpy(), _frame(plain["predictions"]))


def _plain_rng(rng: dict[str, Any]) -> dict[str, Any]:
    """Return the random states of a run: Python's as nested tuples, NumPy's key as a list of ints,
    the GPUs' as a list of byte tensors (empty where none was used)."""
    name, key, pos, has_gauss, gauss = rng["numpy"]
    numpy_state = {"name": name, "key": key.tolist(), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}
    return {**rng, "numpy": numpy_state}


def _rng(plain: dict[str, Any]) -> dict[str, Any]:
    n = plain["numpy"]
    numpy_state = (n["name"], np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    return {**plain, "numpy": numpy_state}


def _plain_state(state: TrainState) -> dict[str, Any]:
    """Return `state` as plain data (model, optimiser and scheduler states are plain already)."""
    best = state.best
    return {
        "epoch": state.epoch,
        "model": state.model,
        "optimizer": state.optimizer,
        "schedulers": state.schedulers,
        "best": {"epoch": best.epoch, "evaluation": _plain_evaluation(best.evaluation), "state": best.state},
        "history": [{f: getattr(h, f) for f in _REPORT_FIELDS} for h in state.history],
        "rng": _plain_rng(state.rng),
        "scaler": state.scaler,
    }


def _state(plain: dict[str, Any]) -> TrainState:
    best = plain["best"]
    return TrainState(
        epoch=plain["epoch"],
        model=plain["model"],
        optimizer=plain["optimizer"],
        schedulers=plain["schedulers"],
        best=BestEpoch(best["epoch"], _evaluation(best["evaluation"]), best["state"]),
        history=[EpochReport(**entry) for entry in plain["history"]],
        rng=_rng(plain["rng"]),
        scaler=plain["scaler"],
    )


def plain_checkpoint(checkpoint: TrialCheckpoint) -> dict[str, Any]:
    """Return what a checkpoint file holds: `checkpoint` as plain data, with its format."""
    state = None if checkpoint.state is None else _plain_state(checkpoint.state)
    return {"format": FORMAT, "run_id": checkpoint.run_id, "metrics": _scalars(checkpoint.metrics), "state": state}


def save_checkpoint(folder: Path, checkpoint: TrialCheckpoint) -> int:
    """Write `checkpoint` into `folder` whole or not at all; returns the file's size in bytes."""
    path = folder / CHECKPOINT_FILE
    with replacing(path) as tmp:
        torch.save(plain_checkpoint(checkpoint), tmp)
    return path.stat().st_size


def load_checkpoint(path: Path) -> TrialCheckpoint:
    """Return the checkpoint in file `path`, loaded as plain data only; raises InputError naming
    the file when it is incomplete, holds anything but plain data, or is not a trial checkpoint."""
    try:
        plain = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Torch's restricted unpickler met an object it will not build: nothing of it ran.
        raise InputError(
            f"{path}: holds pickled Python objects, not the plain data a trial checkpoint holds; "
            "it was refused without loading"
        ) from None
    except (RuntimeError, EOFError):
        raise InputError(f"{path}: the checkpoint is incomplete (cut short, as a full disk leaves one)") from None
    if not isinstance(plain, dict) or plain.get("format") != FORMAT:
        raise InputError(f"{path}: not a trial checkpoint of this harness (expected format {FORMAT!r})")
    state = None if plain["state"] is None else _state(plain["state"])
    return TrialCheckpoint(plain["run_id"], state, plain["metrics"])
