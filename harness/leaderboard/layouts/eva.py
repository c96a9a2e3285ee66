"""eva's comparison (kaiko-ai/eva's pathology leaderboard): balanced accuracy on eva's test part of
BACH or BreakHis (`protocol.name: eva`), with intervals, paired tests and calibration; each encoder
probe sits above eva's published row of its encoder, every other encoder eva publishes below."""

from __future__ import annotations

import math

import pandas as pd

from harness.leaderboard.evidence import TableEvidence
from harness.leaderboard.layouts._common import (
    CALIBRATION_COLUMNS,
    CALIBRATION_NOTE,
    COST_COLUMNS,
    REFERENCE_DATASETS,
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
    published_value,
    statistics_note,
    table_evidence,
    tested_cells,
    tested_columns,
)
from harness.leaderboard.reference import load_reference
from harness.leaderboard.runs import BaselineRuns, RunSet
from harness.leaderboard.table import Cell, ReportTable, Row, number

REFERENCE = "eva_leaderboard"
DATASETS = {"bach": "BACH", "breakhis": "BreakHis"}
COLUMNS = (
    col("model", "model"),
    col("protocol", "protocol"),
    col("encoder", "encoder"),
    col("test_model", "test model"),
    col("test_balanced_accuracy", "balanced accuracy", best=True, metric="test_balanced_accuracy"),
    col("balanced_accuracy_ci", "95% CI"),
    *tested_columns("balanced_accuracy", "p (bootstrap)"),
    col("test_accuracy", "accuracy", best=True),
    col("accuracy_ci", "95% CI "),
    *tested_columns("accuracy", "p (McNemar)"),
    *CALIBRATION_COLUMNS,
    *COST_COLUMNS,
)
# The page's, the terminal's and a paper's table: eva's metric with its interval and tests.
COMPACT = (
    "model",
    "protocol",
    "test_balanced_accuracy",
    "balanced_accuracy_ci",
    "p_balanced_accuracy_holm",
    "letters_balanced_accuracy",
    "test_accuracy",
    "test_ece",
)
NOTE = (
    "Balanced accuracy: the mean over classes of each class's recall, eva's reported metric. A probe's "
    "row is matched to eva's row of its `encoder` (the harness's preset of the same weights); eva's "
    "other encoders follow on their own, never ranked. eva trains one fixed head recipe and reports the "
    "mean of 5 runs on its validation part, which is this table's test set; the harness searches the "
    "head and tests its best model once."
)
BACH_NOTE = "eva leaves BACH out of its average: its images are at an uncommon resolution after resizing."


def eva(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return balanced accuracy of each model on eva's test part of BACH or BreakHis (the dataset of
    the first such run), beside eva's published rows of that dataset."""
    rows = [r for r in ordered(runset.baselines) if r.dataset in DATASETS]
    dataset = rows[0].dataset if rows else "breakhis"
    rows = [r for r in rows if r.dataset == dataset]
    table = ReportTable("eva", f"balanced accuracy on {DATASETS[dataset]}", list(COLUMNS), compact=COMPACT)
    tested = [r for r in rows if r.best is not None]
    model = "ensemble" if tested and all(r.ensemble is not None for r in tested) else "best_trial"
    evidence = table_evidence(runset, rows, model, options)
    published = _published(dataset)
    matched: set[str] = set()
    for runs in rows:
        encoder = _encoder(runs)
        # A random-initialised encoder (no weights file, no digest logged) is no published one.
        read = encoder and _weights_read(runs)
        mine = published[published.harness_encoder == encoder] if read else published.iloc[:0]
        matched |= set(mine.model)
        add_group(table, runs, _cells(runs, model, evidence), [_row(p) for _, p in mine.iterrows()])
    for _, p in published[~published.model.isin(matched)].iterrows():
        label, protocol, cells = _row(p)
        table.rows.append(
            Row("published", label, {"model": Cell(f"published: {label}"), "protocol": Cell(protocol), **cells})
        )
    flag_one_class(table, runset, model)
    what = "the " + ("fold ensemble's" if model == "ensemble" else "best trial's") + " predictions"
    statistics_note(table, evidence, options, what)
    table.footnotes.append(CALIBRATION_NOTE)
    closing_notes(table, runset, dataset, NOTE, *([BACH_NOTE] if dataset == "bach" else []))
    return table


def _encoder(runs: BaselineRuns) -> str:
    """Return the encoder preset the best trial logged, '' for a model without one (a CNN, a floor)."""
    value = runs.best.get("encoder", "") if runs.best is not None else ""
    return "" if pd.isna(value) else str(value)


def _weights_read(runs: BaselineRuns) -> bool:
    """Return True when the best trial's encoder was read from a weights file (it logged the
    file's digest)."""
    value = runs.best.get("encoder_sha256", "") if runs.best is not None else ""
    return bool(value) and not pd.isna(value)


def _published(dataset: str) -> pd.DataFrame:
    """Return eva's rows of `dataset`, best first."""
    frame = load_reference(REFERENCE)
    frame = frame[frame.dataset.map(REFERENCE_DATASETS) == dataset]
    return frame.assign(_value=frame.value.astype(float)).sort_values("_value", ascending=False, kind="stable")


def _encoder_cell(runs: BaselineRuns) -> str:
    """Return the encoder column of a harness row: its preset, marked when it had no weights file."""
    encoder = _encoder(runs)
    if not encoder:
        return "-"
    return encoder if _weights_read(runs) else f"{encoder} (random init)"


def _row(p: pd.Series) -> Published:
    """Return eva's row of one encoder as `add_group` takes it."""
    return f"eva: {p.display_name}", str(p.protocol), {"test_balanced_accuracy": published_value(p.value)}


def _cells(runs: BaselineRuns, model: str, evidence: TableEvidence) -> dict[str, Cell]:
    """Return a harness row: `model`'s balanced accuracy and accuracy on the test part with their
    intervals and tests, calibration and costs."""
    ev = evidence.rows.get(runs.label)
    return {
        "encoder": Cell(_encoder_cell(runs)),
        "test_model": Cell("fold ensemble" if model == "ensemble" else "best trial"),
        "test_balanced_accuracy": number(ev.balanced_accuracy.estimate if ev else math.nan),
        "balanced_accuracy_ci": ci_cell(ev.balanced_accuracy if ev else None),
        **tested_cells(evidence, runs.label, "balanced_accuracy"),
        "test_accuracy": number(ev.accuracy.estimate if ev else math.nan),
        "accuracy_ci": ci_cell(ev.accuracy if ev else None),
        **tested_cells(evidence, runs.label, "accuracy"),
        **calibration_cells(ev),
        **cost_cells(runs),
    }
