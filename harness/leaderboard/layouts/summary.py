"""The summary table of any experiment: the best trial per baseline with its folds, tests and costs."""

from __future__ import annotations

import math

import baselines
from harness import tracking
from harness.leaderboard.evidence import TableEvidence
from harness.leaderboard.layouts._common import (
    CALIBRATION_COLUMNS,
    CALIBRATION_NOTE,
    FLOOR_NOTE,
    LayoutOptions,
    calibration_cells,
    ci_cell,
    col,
    cost_cells,
    flag_one_class,
    main_row,
    mean_sd_cell,
    ordered,
    semantics_note,
    statistics_note,
    table_evidence,
    tested_cells,
    tested_columns,
)
from harness.leaderboard.runs import BaselineRuns, RunSet
from harness.leaderboard.table import Cell, ReportTable, count, number

COLUMNS = (
    col("model", "baseline"),
    col("protocol", "protocol"),
    col("val_accuracy", "val acc", best=True),
    col("folds_val_accuracy", "val acc, folds (mean ± SD)"),
    col("test_accuracy", "test acc", best=True),
    col("test_accuracy_ci", "95% CI"),
    *tested_columns("accuracy", "p (McNemar)"),
    col("test_balanced_accuracy", "test bal. acc", best=True),
    col("test_balanced_accuracy_ci", "95% CI  "),
    *tested_columns("balanced_accuracy", "p (bal. acc)"),
    col("test_auc", "test AUC", best=True),
    col("test_auc_ci", "95% CI "),
    *tested_columns("auc", "p (AUC)"),
    *CALIBRATION_COLUMNS,
    col("test_f1", "F1", best=True),
    col("test_precision", "precision", best=True),
    col("test_recall", "recall", best=True),
    col("folds_mean_test_accuracy", "fold models test acc (mean)", best=True),
    col("ensemble_test_accuracy", "fold ensemble test acc", best=True),
    col("params", "#params (torch)"),
    col("params_published_convention", "#params (published convention)"),
    col("trials", "trials"),
    col("stopped_early", "stopped early"),
    col("failed", "failed"),
    col("gpu_hours", "GPU-h", digits=3),
    col("cpu_hours", "CPU core-h", digits=3),
    col("best_run_id", "run"),
)
# What the page, the terminal and a paper show first: the model, its test accuracy with its interval,
# AUC, calibration, and how it stands against the reference.
COMPACT = (
    "model",
    "protocol",
    "test_accuracy",
    "test_accuracy_ci",
    "p_accuracy_holm",
    "letters_accuracy",
    "test_auc",
    "test_ece",
)
NOTE = (
    "Best trial per baseline by its objective on the validation fold; test metrics are that "
    "trial's best epoch. Fold columns: that configuration retrained on every fold, and the mean "
    "softmax of those fold models. GPU-h and CPU core-h: wall time of every trial and fold run "
    "times the GPU and CPU share Ray granted it."
)


def summary(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return the generic table of any experiment: the best trial per baseline, its folds and costs."""
    table = ReportTable("summary", "best trial per baseline", list(COLUMNS), compact=COMPACT)
    rows = ordered(runset.baselines)
    evidence = table_evidence(runset, rows, "best_trial", options)
    for runs in rows:
        table.rows.append(main_row(runs, runs.label, _cells(runs, evidence)))
    flag_one_class(table, runset, "best_trial")
    table.footnotes.append(NOTE)
    statistics_note(table, evidence, options, "the best trial's model")
    table.footnotes.append(CALIBRATION_NOTE)
    if any(r.floor for r in rows):
        table.footnotes.append(FLOOR_NOTE)
    semantics_note(table)
    return table


def _cells(runs: BaselineRuns, evidence: TableEvidence) -> dict[str, Cell]:
    """Return the cells of a baseline's row: its best trial's metrics, folds, tests and costs."""
    ev = evidence.rows.get(runs.label)
    return {
        "val_accuracy": number(runs.metric("sel_val_accuracy")),
        "folds_val_accuracy": mean_sd_cell(runs.fold_metric("sel_val_accuracy")),
        "test_accuracy": number(runs.metric("test_accuracy")),
        "test_accuracy_ci": ci_cell(ev.accuracy if ev else None),
        **tested_cells(evidence, runs.label, "accuracy"),
        "test_balanced_accuracy": number(runs.metric("test_balanced_accuracy")),
        "test_balanced_accuracy_ci": ci_cell(ev.balanced_accuracy if ev else None),
        **tested_cells(evidence, runs.label, "balanced_accuracy"),
        "test_auc": number(runs.metric("test_auc")),
        "test_auc_ci": ci_cell(ev.auc if ev else None),
        **tested_cells(evidence, runs.label, "auc"),
        **calibration_cells(ev),
        "test_f1": number(runs.metric("test_f1")),
        "test_precision": number(runs.metric("test_precision")),
        "test_recall": number(runs.metric("test_sensitivity")),
        "folds_mean_test_accuracy": number(runs.metric("folds_mean_test_accuracy")),
        "ensemble_test_accuracy": number(runs.metric("ensemble_test_accuracy")),
        "params": count(runs.param_count("torch")),
        "params_published_convention": _published_convention_params(runs),
        "stopped_early": count(int(runs.trials.stopped_by.isin(tracking.EARLY_STOPPERS).sum())),
        "failed": count(int((runs.trials.status == "FAILED").sum())),
        "best_run_id": Cell(runs.best.run_id if runs.best is not None else "-"),
        **cost_cells(runs),
    }


def _published_convention_params(runs: BaselineRuns) -> Cell:
    """Return #params counted as the published paper counts them, with the convention's name ('-' if unknown)."""
    convention = _published_convention(runs.baseline)
    if convention and not math.isnan(runs.param_count(convention)):
        return Cell(f"{int(runs.param_count(convention)):,} ({convention})")
    return Cell("-")


def _published_convention(baseline: str) -> str | None:
    if baseline not in baselines.list_baselines():
        return None
    published = baselines.info(baseline).published
    return published.convention if published else None
