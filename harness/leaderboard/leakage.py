"""The leakage study's table and bar plot, read back from MLflow: for each model, test accuracy and
AUC on the patch-random split and on the patient split, and the inflation between them in points
with a 95% bootstrap interval (each arm's test set resampled by patient, independently)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from harness import stats, tracking
from harness.errors import InputError
from harness.leaderboard.evidence import patient_groups, probabilities
from harness.leaderboard.runs import RunSet
from harness.leaderboard.table import Cell, Column, ReportTable, Row, count, number, signed

PATCH_RANDOM, PATIENT = "patch_random", "patient"


def _accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def latest_study(tracking_uri: str, experiment: str) -> str:
    """Return the run id of the newest finished leakage study of `experiment`."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs(
        [found.experiment_id], f"tags.{tracking.RUN_TYPE} = 'study' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise InputError(f"experiment {experiment!r} has no finished leakage study in {tracking_uri}")
    return runs[0].info.run_id


def leakage_table(tracking_uri: str, experiment: str, study: str, *, n_boot: int = 2000, seed: int = 0) -> ReportTable:
    """Return the study's table: one row per model, both arms, and the inflation with its interval."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    arms = client.search_runs([experiment_id], f"tags.`{tracking.PARENT}` = '{study}' and tags.{tracking.RUN_TYPE} = 'study_arm'")
    columns = [Column("model", "model"), Column("accuracy_patch_random", "acc, patch-random"),
               Column("accuracy_patient", "acc, patient"), Column("inflation_accuracy", "inflation (points)", digits=1),
               Column("inflation_accuracy_ci", "95% CI"), Column("auc_patch_random", "AUC, patch-random"),
               Column("auc_patient", "AUC, patient"), Column("inflation_auc", "AUC inflation (points)", digits=1),
               Column("inflation_auc_ci", "95% CI "), Column("shared", "test patients also in training (patch-random)")]
    table = ReportTable("leakage", "the same model and budget on a patch-random and on a patient split", columns)
    by_model: dict[str, dict[str, object]] = {}
    for run in arms:
        by_model.setdefault(run.data.tags[tracking.BASELINE], {})[run.data.tags[tracking.PROTOCOL]] = run
    runs = RunSet(tracking_uri=tracking_uri, experiments=[experiment], split_hash="", baselines=[])
    for model in sorted(by_model, key=lambda m: (m not in ("majority", "colour_forest"), m)):
        pair = by_model[model]
        if set(pair) != {PATCH_RANDOM, PATIENT}:
            table.footnotes.append(f"{model}: only the {', '.join(pair)} arm finished; no inflation")
            continue
        leaky, clean = pair[PATCH_RANDOM], pair[PATIENT]
        frames = [runs.predictions(r.info.run_id, "test") for r in (leaky, clean)]
        samples = [(f.label.to_numpy(), probabilities(f), patient_groups(f)) for f in frames]
        acc = stats.bootstrap_difference(_accuracy, *samples, n_boot=n_boot, seed=seed)
        auc = stats.bootstrap_difference(stats.auc, *samples, n_boot=n_boot, seed=seed)
        metric = {p: r.data.metrics for p, r in pair.items()}
        floor = " (floor)" if leaky.data.tags.get(tracking.FLOOR) == "true" else ""
        table.rows.append(Row("floor" if floor else "harness", model, {
            "model": Cell(model + floor),
            "accuracy_patch_random": number(metric[PATCH_RANDOM]["test_accuracy"]),
            "accuracy_patient": number(metric[PATIENT]["test_accuracy"]),
            "inflation_accuracy": signed(100 * (metric[PATCH_RANDOM]["test_accuracy"] - metric[PATIENT]["test_accuracy"]), 1),
            "inflation_accuracy_ci": Cell(f"[{100 * acc.low:+.1f}, {100 * acc.high:+.1f}]"),
            "auc_patch_random": number(metric[PATCH_RANDOM].get("test_auc", math.nan)),
            "auc_patient": number(metric[PATIENT].get("test_auc", math.nan)),
            "inflation_auc": signed(100 * (metric[PATCH_RANDOM].get("test_auc", math.nan)
                                           - metric[PATIENT].get("test_auc", math.nan)), 1),
            "inflation_auc_ci": Cell("-") if math.isnan(auc.low) else Cell(f"[{100 * auc.low:+.1f}, {100 * auc.high:+.1f}]"),
            "shared": count(int(leaky.data.tags.get("shared_test_patients", "0"))),
        }))
        method = acc.method
    if table.rows:
        table.footnotes.append(f"Inflation = patch-random minus patient, in points. 95% CI: {method}.")
    table.footnotes.append("Both arms: the published recipe, the same epoch budget, seed and fold; each is tested on its "
                           "own split's test set. The patient split keeps every patient on one side; the patch-random "
                           "split (the seeds' protocol, BASELINES.md §1.4) does not. Arms are tagged protocol="
                           "patch_random / patient and never enter a leaderboard table.")
    return table


def leakage_plot(table: ReportTable, path: Path) -> Path:
    """Write a grouped bar plot of test accuracy per model in both arms; returns the file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.rows
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2.5, 3.8), dpi=110)
    for offset, key, label in ((-0.2, "accuracy_patch_random", "patch-random split"), (0.2, "accuracy_patient", "patient split")):
        ax.bar(x + offset, [r.cells[key].value for r in rows], width=0.4, label=label)
    for i, row in enumerate(rows):
        top = max(row.cells["accuracy_patch_random"].value, row.cells["accuracy_patient"].value)
        ax.annotate(f"{row.cells['inflation_accuracy'].text} pts", (i, top), ha="center", xytext=(0, 4),
                    textcoords="offset points", fontsize=8)
    ax.set_xticks(x, [r.cells["model"].text for r in rows], fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.08)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("What a patch-random split adds to test accuracy", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
