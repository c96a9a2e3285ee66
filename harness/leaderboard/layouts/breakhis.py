"""The BreakHis comparison: image- and patient-level test accuracy per magnification, beside 000."""

from __future__ import annotations

import math

from harness.leaderboard.layouts._common import (
    COST_COLUMNS,
    LayoutOptions,
    Published,
    add_group,
    closing_notes,
    col,
    cost_cells,
    flag_one_class,
    ordered,
    published_rows,
    published_value,
    source_label,
)
from harness.leaderboard.runs import BaselineRuns, RunSet
from harness.leaderboard.table import Cell, Column, ReportTable, number
from harness.metrics import grouped_accuracies

MAGNIFICATIONS = (40, 100, 200, 400)
# The page's, the terminal's and a paper's table: accuracy over all magnifications.
COMPACT = ("model", "protocol", "image_all", "patient_all")


def _columns() -> list[Column]:
    """Return the image and patient accuracy columns of each magnification, then of all images, then costs."""
    columns = [col("model", "model"), col("protocol", "protocol")]
    for mag in MAGNIFICATIONS:
        columns += [
            col(f"image_{mag}", f"{mag}x image", best=True, metric="test_accuracy"),
            col(f"patient_{mag}", f"{mag}x patient", best=True, metric="patient_accuracy"),
        ]
    return [
        *columns,
        col("image_all", "all image", best=True, metric="test_accuracy"),
        col("patient_all", "all patient", best=True, metric="patient_accuracy"),
        *COST_COLUMNS,
    ]


def breakhis(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return image- and patient-level test accuracy per magnification, beside 000's (unpublished) rows."""
    title = "BreakHis: image- and patient-level test accuracy per magnification"
    table = ReportTable("breakhis", title, _columns(), compact=COMPACT)
    for runs in ordered(runset.baselines):
        if runs.dataset != "breakhis":
            continue
        harness = _cells(runset, runs)
        if harness is not None:
            add_group(table, runs, harness, _published(runs))
    flag_one_class(table, runset, _test_model)
    closing_notes(
        table,
        runset,
        "breakhis",
        "Patient accuracy: the mean over patients of each patient's image accuracy (Spanhol's "
        "patient recognition rate). Test model: the fold ensemble where the winner was retrained, "
        "else the best trial. 000 publishes no numbers in the seed (n/a).",
    )
    return table


def _test_model(runs: BaselineRuns) -> str:
    return "ensemble" if runs.ensemble is not None else "best_trial"


def _cells(runset: RunSet, runs: BaselineRuns) -> dict[str, Cell] | None:
    """Return a harness row from the fold ensemble's test predictions, else the best trial's; None without any."""
    frame = runset.test_predictions(runs, _test_model(runs))
    if frame is None:
        return None
    grouped = grouped_accuracies(frame)
    cells = {
        "image_all": number(float((frame.label == frame.pred).mean())),
        "patient_all": number(grouped.get("patient_accuracy", math.nan)),
        **cost_cells(runs),
    }
    for mag in MAGNIFICATIONS:
        cells[f"image_{mag}"] = number(grouped.get(f"accuracy_{mag}x", math.nan))
        cells[f"patient_{mag}"] = number(grouped.get(f"patient_accuracy_{mag}x", math.nan))
    return cells


def _published(runs: BaselineRuns) -> list[Published]:
    """Return 000's row of this baseline: its image accuracy per magnification (n/a: unpublished)."""
    mine = published_rows("amil_breakhis_bach", runs)
    if mine.empty:
        return []
    cells = {
        f"image_{int(p.magnification)}": published_value(p.value)
        for _, p in mine.iterrows()
        if str(p.magnification).isdigit()
    }
    return [(source_label(mine.iloc[0]), mine.protocol.iloc[0], cells)]
