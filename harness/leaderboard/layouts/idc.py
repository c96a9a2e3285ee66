"""The IDC comparison: each model on the patient-disjoint test set, with intervals, tests and
calibration, beside 004, S-PIS and 003."""

from __future__ import annotations

import math

import pandas as pd

from harness.leaderboard.evidence import TableEvidence, probabilities
from harness.leaderboard.layouts._common import (
    CALIBRATION_COLUMNS,
    CALIBRATION_NOTE,
    COST_COLUMNS,
    LayoutOptions,
    Published,
    add_group,
    calibration_cells,
    ci_cell,
    closing_notes,
    col,
    cost_cells,
    flag_one_class,
    ordered,
    published_rows,
    published_value,
    source_label,
    statistics_note,
    table_evidence,
    tested_cells,
    tested_columns,
)
from harness.leaderboard.runs import BaselineRuns, RunSet
from harness.leaderboard.table import Cell, ReportTable, number
from harness.metrics import classification_metrics

# The columns compared with published numbers, by the key of their test metric.
METRIC_COLUMNS = {
    "test_accuracy": col("test_accuracy", "accuracy", best=True, metric="test_accuracy"),
    "test_auc": col("test_auc", "AUC", best=True, metric="test_auc"),
    "test_f1": col("test_f1", "F1", best=True, metric="test_f1"),
    "test_precision": col("test_precision", "precision", best=True, metric="test_precision"),
    "test_recall": col("test_recall", "recall (IDC)", best=True, metric="test_recall"),
}
COLUMNS = (
    col("model", "model"),
    col("protocol", "protocol"),
    col("test_model", "test model"),
    METRIC_COLUMNS["test_accuracy"],
    col("accuracy_ci", "95% CI"),
    *tested_columns("accuracy", "p (McNemar)"),
    METRIC_COLUMNS["test_auc"],
    col("auc_ci", "95% CI "),
    *tested_columns("auc", "p (DeLong)"),
    *CALIBRATION_COLUMNS,
    METRIC_COLUMNS["test_f1"],
    METRIC_COLUMNS["test_precision"],
    METRIC_COLUMNS["test_recall"],
    *COST_COLUMNS,
)
# The page's, the terminal's and a paper's table: as the summary's (test model, F1, precision and
# recall are one click or `--full` away).
COMPACT = (
    "model",
    "protocol",
    "test_accuracy",
    "accuracy_ci",
    "p_accuracy_holm",
    "letters_accuracy",
    "test_auc",
    "test_ece",
)
NOTE = (
    "Class 1 (IDC) is positive: precision, recall and F1 are those of IDC (BASELINES.md §4.2). "
    "S-PIS labels class-1 recall 'specificity'; it sits in the recall column here. 004's "
    "precision/recall/F1 are its class-1 row of Table IV."
)


def idc(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return the IDC comparison: accuracy, AUC, F1, precision and recall of each model on the
    patient-disjoint test set, beside 004, S-PIS and 003."""
    table = ReportTable("idc", "IDC: patient-disjoint test set", list(COLUMNS), compact=COMPACT)
    rows = [r for r in ordered(runset.baselines) if r.dataset == "idc"]
    tested = [r for r in rows if r.best is not None]
    model = "ensemble" if tested and all(r.ensemble is not None for r in tested) else "best_trial"
    evidence = table_evidence(runset, rows, model, options)
    for runs in rows:
        add_group(table, runs, _cells(runset, runs, model, evidence), _published(runs))
    flag_one_class(table, runset, model)
    table.footnotes.append(NOTE)
    statistics_note(
        table,
        evidence,
        options,
        "the " + ("fold ensemble's" if model == "ensemble" else "best trial's") + " predictions",
    )
    table.footnotes.append(CALIBRATION_NOTE)
    closing_notes(table, runset, "idc")
    return table


def _cells(runset: RunSet, runs: BaselineRuns, model: str, evidence: TableEvidence) -> dict[str, Cell]:
    """Return a harness row: the metrics of `model`'s test predictions (ensemble or best trial),
    their intervals and tests, calibration and costs."""
    ev = evidence.rows.get(runs.label)
    frame = runset.test_predictions(runs, model)
    metrics = _binary_metrics(frame) if frame is not None else {}
    return {
        "test_model": Cell("fold ensemble" if model == "ensemble" else "best trial"),
        **{key: number(metrics.get(key, math.nan)) for key in METRIC_COLUMNS},
        "accuracy_ci": ci_cell(ev.accuracy if ev else None),
        **tested_cells(evidence, runs.label, "accuracy"),
        "auc_ci": ci_cell(ev.auc if ev else None),
        **tested_cells(evidence, runs.label, "auc"),
        **calibration_cells(ev),
        **cost_cells(runs),
    }


def _binary_metrics(frame: pd.DataFrame) -> dict[str, float]:
    metrics = classification_metrics(frame.label.to_numpy(), probabilities(frame))
    return {f"test_{k}": v for k, v in metrics.items()} | {"test_recall": metrics["sensitivity"]}


def _published(runs: BaselineRuns) -> list[Published]:
    """Return the published IDC rows of this baseline: 004's Tables III and IV, S-PIS, then 003's readings."""
    rows = [
        (source_label(p), p.protocol, {"test_accuracy": published_value(p.test_accuracy)})
        for _, p in published_rows("karatayev2021_table3", runs).iterrows()
    ]
    rows += _karatayev_table4(published_rows("karatayev2021_table4", runs))
    rows += _pis(published_rows("pis_cancernet", runs))
    essex = published_rows("essex2023_idc", runs)
    essex = essex[essex.split == "test"]
    if not essex.empty:
        rows += _readings(essex)
    return rows


def _karatayev_table4(table4: pd.DataFrame) -> list[Published]:
    """Return 004's Table IV as one row: its class-1 precision, recall and F1, and its accuracy."""
    if table4.empty:
        return []
    positive, overall = table4[table4.row == "1"].iloc[0], table4[table4.row == "accuracy"].iloc[0]
    cells = {
        # A classification report prints the accuracy in its F1 column.
        "test_accuracy": published_value(overall.f1),
        **{f"test_{m}": published_value(positive[m]) for m in ("precision", "recall", "f1")},
    }
    return [(source_label(positive), positive.protocol, cells)]


def _pis(pis: pd.DataFrame) -> list[Published]:
    """Return S-PIS's CancerNet output as one row (its class-1 'specificity' is class-1 recall)."""
    if pis.empty:
        return []
    value = dict(zip(pis.metric, pis.value))
    cells = {
        "test_accuracy": published_value(value["accuracy"]),
        "test_precision": published_value(value["precision_class1"]),
        "test_recall": published_value(value["recall_class1_labelled_specificity"]),
        "test_f1": published_value(value["f1_class1"]),
    }
    return [(source_label(pis.iloc[0]), pis.protocol.iloc[0], cells)]


def _readings(frame: pd.DataFrame) -> list[Published]:
    """Return one published row per reading of a source that states a metric more than once (003)."""
    names = {
        "accuracy": "test_accuracy",
        "auc": "test_auc",
        "f1": "test_f1",
        "sensitivity_idc": "test_recall",
        "precision_range_pct": "test_precision",
    }
    values = {
        names[m]: list(g.itertuples())
        for m, g in frame.groupby("metric", sort=False)
        if isinstance(m, str) and m in names
    }
    readings = max(len(v) for v in values.values())
    rows = []
    for i in range(readings):
        cells, sections = {}, set()
        for key, entries in values.items():
            if i >= len(entries):
                continue  # stated once: it belongs to the first reading only
            entry = entries[i]
            # 003 gives precision only as a range of percentages ("88-90").
            cells[key] = Cell(f"{entry.value}%") if key == "test_precision" else published_value(str(entry.value))
            if len(entries) > 1:
                sections.add(str(entry.section).replace(";", ", "))
        where = f" (§{'; '.join(sorted(sections))})" if sections else ""
        rows.append((source_label(frame.iloc[0]) + where, frame.protocol.iloc[0], cells))
    return rows
