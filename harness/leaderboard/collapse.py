"""Models that predict one class: a row whose test predictions are almost all one class scores the
share of that class, what the majority floor scores, whatever its accuracy looks like. Read from the
per-image test predictions every evaluated run logs (test/predictions.csv)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# One class for at least this share of the test images: a model that learned something leaves a
# few percent to the other classes even on an unbalanced set; 0.98 catches a model that scores
# one image in fifty otherwise, and leaves alone a test set whose labels are that unbalanced.
ONE_CLASS_SHARE = 0.98
NOTE = (
    f"Predicts one class: one class takes at least {ONE_CLASS_SHARE:.0%} of the model's test predictions "
    "while the test labels give that class less, so its accuracy is about that class's share, what the "
    "majority floor scores; such a row is called out above the table and never marked best."
)


@dataclass(frozen=True)
class OneClass:
    """The class a model predicts for nearly every test image, that share, and the class's share of the labels."""

    name: str
    share: float
    label_share: float


def one_class(frame: pd.DataFrame, class_names: list[str]) -> OneClass | None:
    """Return the class predicted for at least ONE_CLASS_SHARE of `frame`'s images (a predictions
    table: label, pred), None when no class is, or when the labels themselves are that unbalanced."""
    if frame.empty:
        return None
    counts = np.bincount(frame.pred.to_numpy(dtype=np.int64))
    k, share = int(counts.argmax()), float(counts.max() / len(frame))
    label_share = float((frame.label == k).mean())
    if share < ONE_CLASS_SHARE or label_share >= ONE_CLASS_SHARE:
        return None
    return OneClass(class_names[k] if k < len(class_names) else str(k), share, label_share)


def callout(label: str, found: OneClass, images: str = "test images") -> str:
    """Return the line that calls a one-class model out, worded like a floor ahead of every model."""
    return (
        f"{label} predicts {found.name} for {found.share:.1%} of {images}: no better than majority "
        f"({found.name} is {found.label_share:.1%} of them)"
    )
