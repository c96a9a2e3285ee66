"""Classification metrics with the definitions of BASELINES.md §4.2."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import confusion_matrix, roc_auc_score

# The metrics every run reports, prefixed with val_ or test_.
METRIC_NAMES = (
    "loss",
    "accuracy",
    "balanced_accuracy",
    "auc",
    "f1",
    "precision",
    "sensitivity",
    "specificity",
)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Return raw counts, rows = true class, columns = predicted class."""
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def roc_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Return the ROC AUC of class 1 (binary) or the macro one-vs-rest AUC; NaN with one class."""
    if len(np.unique(y_true)) < 2:
        return float("nan")  # AUC is undefined when one class is absent
    if prob.shape[1] == 2:
        return float(roc_auc_score(y_true, prob[:, 1]))
    return float(roc_auc_score(y_true, prob, multi_class="ovr", average="macro", labels=list(range(prob.shape[1]))))


def _ratio(num: float, den: float, undefined: float = float("nan")) -> float:
    return float(num / den) if den else undefined


def _mean(values: np.ndarray) -> float:
    """Mean over the defined entries; NaN when none is defined (e.g. a class never predicted)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def classification_metrics(y_true: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Return accuracy, balanced accuracy, AUC, F1, precision, sensitivity and specificity.

    Binary tasks take class 1 as positive (IDC, malignant). Multi-class tasks report macro F1 and
    precision, macro one-vs-rest AUC, and mean per-class sensitivity and specificity. A class never
    predicted has precision and F1 0 (scikit-learn's zero_division=0), not NaN.
    """
    y_true = np.asarray(y_true)
    prob = np.asarray(prob, dtype=np.float64)
    num_classes = prob.shape[1]
    cm = confusion(y_true, prob.argmax(1), num_classes).astype(np.float64)
    tp = np.diag(cm)
    fn = cm.sum(1) - tp
    fp = cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp
    recall = np.array([_ratio(tp[c], tp[c] + fn[c]) for c in range(num_classes)])
    precision = np.array([_ratio(tp[c], tp[c] + fp[c], undefined=0.0) for c in range(num_classes)])
    spec = np.array([_ratio(tn[c], tn[c] + fp[c]) for c in range(num_classes)])
    f1 = np.array([_ratio(2 * p * r, p + r, undefined=0.0) for p, r in zip(precision, recall)])
    classes = [1] if num_classes == 2 else list(range(num_classes))
    return {
        "accuracy": _ratio(tp.sum(), cm.sum()),
        "balanced_accuracy": _mean(recall),
        "auc": roc_auc(y_true, prob),
        "f1": _mean(f1[classes]),
        "precision": _mean(precision[classes]),
        "sensitivity": _mean(recall[classes]),
        "specificity": _mean(spec[classes]),
    }


def never_predicted(matrix: np.ndarray, class_names: tuple[str, ...]) -> list[str]:
    """Return the classes a confusion matrix (rows true, columns predicted) never predicts."""
    return [name for name, count in zip(class_names, np.asarray(matrix).sum(0)) if count == 0]


def patient_accuracy(y_true: ArrayLike, y_pred: ArrayLike, patients: ArrayLike) -> float:
    """Return the patient recognition rate: the mean over patients of each patient's image accuracy."""
    frame = pd.DataFrame({"correct": np.asarray(y_true) == np.asarray(y_pred), "patient": np.asarray(patients)})
    return float(frame.groupby("patient").correct.mean().mean())


def grouped_accuracies(predictions: pd.DataFrame) -> dict[str, float]:
    """Return patient-level accuracy where patients hold several images, and image- and
    patient-level accuracy per magnification where there are several (BreakHis, §4.2)."""
    metrics: dict[str, float] = {}
    if predictions.patient_id.nunique() < len(predictions):
        metrics["patient_accuracy"] = patient_accuracy(predictions.label, predictions.pred, predictions.patient_id)
    if "magnification" in predictions and predictions.magnification.nunique() > 1:
        for mag, part in predictions.groupby("magnification"):
            metrics[f"accuracy_{mag}x"] = float((part.label == part.pred).mean())
            metrics[f"patient_accuracy_{mag}x"] = patient_accuracy(part.label, part.pred, part.patient_id)
    return metrics


def ranking_key(objective: float, sel_val_loss: float, trial_id: str, *, minimise: bool) -> tuple[float, float, str]:
    """Return the sort key that orders trials best first: objective, then validation loss, then
    trial id, so the sweep's fold retrain and the leaderboard pick the same winner on a tie."""
    return (objective if minimise else -objective, sel_val_loss, trial_id)
