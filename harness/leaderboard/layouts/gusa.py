"""001's Tables I-IV on BACH part A: validation folds and test (I), RoI mIoU (II), class-wise AUC
(III) and confusion matrices (IV), each harness row beside 001's."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import TypedDict, cast

import numpy as np
import pandas as pd

from harness.leaderboard.evidence import TableEvidence, probabilities
from harness.leaderboard.layouts._common import (
    COST_COLUMNS,
    LayoutOptions,
    Published,
    add_group,
    ci_cell,
    closing_notes,
    col,
    cost_cells,
    flag_one_class,
    mean_sd_cell,
    ordered,
    published_rows,
    published_value,
    source_label,
    statistics_note,
    table_evidence,
    tested_cells,
    tested_columns,
)
from harness.leaderboard.reference import load_reference
from harness.leaderboard.runs import BaselineRuns, RunSet
from harness.leaderboard.stats import mean_sd_se
from harness.leaderboard.table import EMPTY, Cell, Column, ReportTable, count, number
from harness.metrics import roc_auc


class _Scale(TypedDict):
    """The scale and digits `col` takes, for the columns shown in percent."""

    scale: float
    digits: int


# --- 001 Table I ------------------------------------------------------------------------------

_PERCENT: _Scale = dict(scale=100.0, digits=2)
TABLE1_COLUMNS = (
    col("model", "model"),
    col("protocol", "protocol"),
    col("val_accuracy", "val acc (%)", best=True, metric="val_accuracy", **_PERCENT),
    col("val_sd", "SD"),
    col("val_se", "SE"),
    col("val_auc", "val AUC", best=True, metric="val_auc"),
    col("test_single", "test single (%), mean ± SD"),
    col("test_single_best", "test single (%), best fold on test ˢ", metric="test_accuracy_single", **_PERCENT),
    col("test_ensemble", "test ensemble (%)", best=True, metric="test_accuracy_ensemble", **_PERCENT),
    col("test_ensemble_ci", "95% CI"),
    *tested_columns("accuracy", "p (McNemar)"),
    col("params", "#params", metric=None, digits=0),
    *COST_COLUMNS,
)
# The page's, the terminal's and a paper's Table I: validation, the ensemble's test accuracy with its
# interval, and how it stands against the reference.
TABLE1_COMPACT = (
    "model",
    "protocol",
    "val_accuracy",
    "val_auc",
    "test_ensemble",
    "test_ensemble_ci",
    "p_accuracy_holm",
    "letters_accuracy",
)
TABLE1_NOTES = (
    "Validation accuracy: mean over the retrained fold models' best epochs (the search fold alone when the winner "
    "was not retrained); SD with ddof 1 and SE = SD/√k over folds. ‡ 001's ± reproduces no SD, and an SE with an "
    "inconsistent ddof for five of its eight rows: convention unknown, SE-like (BASELINES.md §3.1).",
    "Validation AUC: macro one-vs-rest AUC of the out-of-fold predictions pooled over folds (each image scored once).",
    "ˢ best fold model chosen on the test set: what 001 calls 'single model'; shown only to sit beside 001's "
    "column. Test ensemble: mean softmax of the fold models (001 eq. 10). The harness tests on its own hold-out, "
    "001 on BACH's hidden official test set.",
    "#params: in the counting convention that reproduces 001's number (BASELINES.md §5) where one does, else torch.",
)


def gusa_table1(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return 001's Table I: validation accuracy (mean, SD and SE over folds), validation AUC, test
    accuracy of single fold models and of their ensemble, #params, beside 001's rows."""
    title = "001 Table I: BACH part A, validation folds and test"
    table = ReportTable("gusa-table1", title, list(TABLE1_COLUMNS), compact=TABLE1_COMPACT)
    ranked = ordered(runset.baselines)
    evidence = table_evidence(runset, ranked, "ensemble", options)
    order = {b: i for i, b in enumerate(load_reference("gusa_table1").harness_baseline)}
    for runs in sorted(ranked, key=lambda r: order.get(r.baseline, len(order))):  # 001's row order
        published = published_rows("gusa_table1", runs)
        harness = {**_table1_cells(runset, runs, evidence), "params": _table1_params(runs, published)}
        add_group(table, runs, harness, [_table1_published(p) for _, p in published.iterrows()])
        _params_difference(table, runs.label)
    flag_one_class(table, runset, "ensemble")
    table.footnotes += TABLE1_NOTES
    statistics_note(table, evidence, options, "the fold ensemble's predictions")
    closing_notes(table, runset, "bach")
    return table


def _table1_cells(runset: RunSet, runs: BaselineRuns, evidence: TableEvidence) -> dict[str, Cell]:
    """Return a harness row of Table I, #params aside."""
    ev = evidence.rows.get(runs.label)
    folds = runs.fold_metric("sel_val_accuracy")
    values = folds or [runs.metric("sel_val_accuracy")]
    mean, sd, se = mean_sd_se(np.asarray(values) * 100) if not math.isnan(values[0]) else (math.nan,) * 3
    pooled, _ = runset.pooled_val_predictions(runs)
    val_auc = (
        roc_auc(pooled.label.to_numpy(), probabilities(pooled)) if pooled is not None else runs.metric("sel_val_auc")
    )
    single = runs.fold_metric("test_accuracy")
    return {
        "val_accuracy": number(mean / 100, 2, scale=100),
        "val_sd": number(sd, 2),
        "val_se": number(se, 2),
        "val_auc": number(val_auc),
        "test_single": mean_sd_cell(single, 100, 2),
        "test_single_best": number(max(single), 2, scale=100) if single else Cell("-"),
        "test_ensemble": number(runs.ensemble.test_accuracy, 2, scale=100) if runs.ensemble is not None else Cell("-"),
        "test_ensemble_ci": ci_cell(ev.accuracy, 100, 2) if ev else Cell("-"),
        **tested_cells(evidence, runs.label, "accuracy"),
        **cost_cells(runs),
    }


def _table1_params(runs: BaselineRuns, published: pd.DataFrame) -> Cell:
    """Return a harness row's #params: in the counting convention that reproduces 001's number where
    one does (the last of its published rows that names one), else torch's."""
    params = count(runs.param_count("torch"))
    for convention in published.param_convention_reproducing:
        if convention not in ("none", "NA"):
            params = count(runs.param_count(convention))
            params = replace(params, text=f"{params.text} ({convention})")
    return params


def _table1_published(pub: pd.Series) -> Published:
    """Return one of 001's Table I rows as the table shows it."""
    cells = {
        "val_accuracy": published_value(pub.val_acc_mean_pct),
        "val_se": Cell(f"±{pub.val_acc_pm_pct} ‡"),
        "val_auc": published_value(pub.val_auc_macro),
        "test_single_best": published_value(pub.test_acc_single_pct),
        "test_ensemble": published_value(pub.test_acc_ensemble_pct),
        "params": count(float(pub.params_published)),
    }
    return source_label(pub), pub.protocol, cells


def _params_difference(table: ReportTable, group: str) -> None:
    """#params is not checked against a tolerance, but its difference is shown."""
    rows = [r for r in table.rows if r.group == group]
    harness = rows[0].cells.get("params")
    for published, following in zip(rows, rows[1:]):
        if published.kind == "published" and "params" in published.cells and harness and harness.value is not None:
            theirs = published.cells["params"].value
            if following.kind == "difference" and theirs is not None:
                following.cells["params"] = Cell(f"{int(harness.value - theirs):+,}", harness.value - theirs)


# --- 001 Table II -----------------------------------------------------------------------------

TABLE2_COLUMNS = (
    col("model", "model"),
    col("protocol", "protocol"),
    col("roi_source", "RoI masks"),
    col("miou", "mIoU, native (mean)", best=True, metric="miou"),
    col("miou_sd", "SD"),
    col("miou_full", "mIoU, full resolution (mean)", best=True),
    col("miou_full_sd", "SD "),
)
TABLE2_NOTE = (
    "mIoU: per-image IoU of the map binarised at 0.5 "
    "against the RoI mask, averaged over a fold's validation images, "
    "mean and SD over folds (BASELINES.md §4.3). Native: the mask area-averaged down to the map's grid; full: the "
    "map upsampled bilinearly to the mask. 001 does not say which resolution it scored."
)


def gusa_table2(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return 001's Table II: mean IoU of the RoI/attention maps on the validation folds (τ = 0.5)."""
    title = "001 Table II: RoI detection on the validation folds, mIoU at τ = 0.5"
    table = ReportTable("gusa-table2", title, list(TABLE2_COLUMNS))
    for runs in ordered(runset.baselines):
        native = runs.fold_metric("sel_val_miou_native") or [runs.metric("sel_val_miou_native")]
        full = runs.fold_metric("sel_val_miou_full") or [runs.metric("sel_val_miou_full")]
        if all(math.isnan(v) for v in native):
            continue
        roi_source = runs.roi_source if runs.roi_source == "files" else f"{runs.roi_source} ¶"
        harness = {"roi_source": Cell(roi_source), **_mean_sd_pair("miou", native), **_mean_sd_pair("miou_full", full)}
        add_group(table, runs, harness, _table2_published(runs))
    table.footnotes.append(TABLE2_NOTE)
    if any(r.cells.get("roi_source", EMPTY).text.endswith("¶") for r in table.rows):
        table.footnotes.append(
            "¶ masks are not expert outlines (tissue fallback), so no published mIoU is placed beside them."
        )
    if not table.rows:
        table.footnotes.insert(
            0,
            "No run logged a localisation score: no baseline with RoI or attention maps was "
            "trained with RoI masks on this split.",
        )
    closing_notes(table, runset, "bach")
    return table


def _table2_published(runs: BaselineRuns) -> list[Published]:
    """Return 001's mIoU rows of this baseline; none beside masks that are not expert outlines."""
    if runs.roi_source != "files":
        return []
    return [
        (source_label(p), p.protocol, {"miou": published_value(p["mean"]), "miou_sd": Cell(f"±{p.pm}")})
        for _, p in published_rows("gusa_table2_miou", runs).iterrows()
    ]


def _mean_sd_pair(key: str, values: list[float]) -> dict[str, Cell]:
    """Return the mean and SD cells of `values` under `key` and `key`_sd, NaNs left out."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {key: Cell("-"), f"{key}_sd": Cell("-")}
    mean, sd, _ = mean_sd_se(np.asarray(values))
    return {key: number(mean, 3), f"{key}_sd": number(sd, 3)}


# --- 001 Table III ----------------------------------------------------------------------------


def _pooled_validation(runset: RunSet) -> Iterator[tuple[BaselineRuns, pd.DataFrame, str, list[str]]]:
    """Yield, best first, each baseline with validation predictions: its pooled predictions, how
    they were pooled, and its class names in lower case."""
    for runs in ordered(runset.baselines):
        pooled, how = runset.pooled_val_predictions(runs)
        if pooled is not None:
            yield runs, pooled, how, [n.lower() for n in runset.class_names(runs)]


def gusa_table3(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return 001's Table III: class-wise one-vs-rest AUC of the pooled out-of-fold predictions."""
    class_columns = [c for c in load_reference("gusa_table3_class_auc").columns if c.startswith("auc_")]
    columns = [
        col("model", "model"),
        col("protocol", "protocol"),
        *(col(c, c.removeprefix("auc_").capitalize(), best=True, metric="class_auc") for c in class_columns),
        col("macro", "macro mean", best=True, metric="val_auc"),
        col("pooled", "predictions"),
    ]
    table = ReportTable("gusa-table3", "001 Table III: class-wise AUC on validation", columns)
    for runs, pooled, how, names in _pooled_validation(runset):
        harness = {"pooled": Cell(how), **_class_aucs(pooled, names, class_columns)}
        add_group(table, runs, harness, _table3_published(runs, class_columns))
    closing_notes(
        table,
        runset,
        "bach",
        "One-vs-rest ROC AUC per class on the out-of-fold validation predictions pooled over the "
        "retrained folds (the search fold alone where the winner was not retrained). 001's macro "
        "means are derived from its class AUCs (BASELINES.md §3.1).",
    )
    return table


def _class_aucs(pooled: pd.DataFrame, names: list[str], class_columns: list[str]) -> dict[str, Cell]:
    """Return the macro AUC of the pooled predictions and the one-vs-rest AUC of each class that has a column."""
    probs, labels = probabilities(pooled), pooled.label.to_numpy()
    cells = {"macro": number(roc_auc(labels, probs))}
    for column in class_columns:
        name = column.removeprefix("auc_")
        if name in names:
            k = names.index(name)
            cells[column] = number(roc_auc((labels == k).astype(int), np.stack([1 - probs[:, k], probs[:, k]], 1)))
    return cells


def _table3_published(runs: BaselineRuns, class_columns: list[str]) -> list[Published]:
    """Return 001's class AUCs of this baseline, with the macro mean derived from them."""
    return [
        (
            source_label(p),
            p.protocol,
            {
                **{c: published_value(p[c]) for c in class_columns},
                "macro": Cell(f"{p.derived_macro_mean} (derived)", float(p.derived_macro_mean)),
            },
        )
        for _, p in published_rows("gusa_table3_class_auc", runs).iterrows()
    ]


# --- 001 Table IV -----------------------------------------------------------------------------


def gusa_table4(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return 001's Table IV: row-normalised confusion matrices of the pooled validation predictions."""
    predicted = [c for c in load_reference("gusa_table4_confusion").columns if c.startswith("pred_")]
    title = "001 Table IV: confusion matrices on validation, rows normalised"
    table = ReportTable("gusa-table4", title, _table4_columns(predicted))
    for runs, pooled, _, names in _pooled_validation(runset):
        matrix = pd.crosstab(pooled.label, pooled.pred).reindex(
            index=range(len(names)), columns=range(len(names)), fill_value=0
        )
        mine = published_rows("gusa_table4_confusion", runs)
        for k, name in enumerate(names):
            rows = mine[mine.true_class.str.lower() == name]
            published = [
                (f"{source_label(p)} ({p.panel})", p.protocol, {c: published_value(p[c]) for c in predicted})
                for _, p in rows.iterrows()
            ]
            # One row: the matrix was reindexed to the unique labels 0..n-1.
            harness = _confusion_row(cast(pd.Series, matrix.loc[k]), names, predicted)
            add_group(table, runs, harness, published, group=f"{runs.label}: {name}")
    closing_notes(
        table,
        runset,
        "bach",
        "Rows: true class; columns: predicted class; each row sums to 1. Pooled out-of-fold "
        "validation predictions. 001's panels (b)-(d) are B+FA, B+FA+GuRoI and B+FA+GuSA.",
    )
    return table


def _table4_columns(predicted: list[str]) -> list[Column]:
    """Return Table IV's columns: one per predicted class 001 shows, then the row's image count."""
    return [
        col("model", "model / true class"),
        col("protocol", "protocol"),
        *(col(c, "pred " + c.removeprefix("pred_").capitalize(), metric="confusion", digits=2) for c in predicted),
        col("images", "images"),
    ]


def _confusion_row(counts: pd.Series, names: list[str], predicted: list[str]) -> dict[str, Cell]:
    """Return one true class's row of the confusion matrix, as fractions of its images."""
    total = int(counts.sum())
    cells = {"images": count(total)}
    for column in predicted:
        j = names.index(column.removeprefix("pred_")) if column.removeprefix("pred_") in names else None
        if j is not None and total:
            cells[column] = number(counts.loc[j] / total, 2)
    return cells
