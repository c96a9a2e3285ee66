"""The shape every leaderboard layout fills and every format renders: columns (all of them, and the
compact few a page, a terminal and a paper show first), rows grouped by model (the harness's row,
then each published row and its difference), callouts, footnotes, and the
reproduced-against-published pairs that `--check` holds to a tolerance."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

RowKind = Literal["harness", "floor", "published", "difference"]
# Rows that carry a result of this harness (a floor is one, but never wins a column).
MAIN_ROWS = ("harness", "floor")
# What bold means, under every table that bolds anything.
BEST_LEGEND = (
    "Bold: the best model's value in a column, and only where it is better than every floor's; a floor "
    "or a model that predicts one class is never bold."
)


@dataclass(frozen=True)
class Column:
    """A column: its key in CSV, its header, whether a higher value wins (bolded among harness
    rows), the metric `--check` compares in it, and the scale of its numbers (100 for percent)."""

    key: str
    header: str
    higher_is_better: bool | None = None
    metric: str | None = None
    scale: float = 1.0
    digits: int = 4


@dataclass(frozen=True)
class Cell:
    """What a table shows, and the number behind it (None for text)."""

    text: str
    value: float | None = None


EMPTY = Cell("")


@dataclass(frozen=True)
class Comparison:
    """One reproduced number beside its published one, on the same scale."""

    group: str
    metric: str
    column: str
    reproduced: float
    published: float
    source: str
    protocol_differs: bool

    @property
    def difference(self) -> float:
        """Return reproduced minus published."""
        return self.reproduced - self.published


@dataclass
class Row:
    """One line of a table: a harness result, a floor model's, a published result, or a difference;
    `collapsed` when the model predicts one class (it is called out and never marked best)."""

    kind: RowKind
    group: str
    cells: dict[str, Cell]
    collapsed: bool = False


@dataclass
class ReportTable:
    """A laid-out comparison table, ready for Markdown, LaTeX, CSV and HTML. `compact` names the
    columns shown first (empty: all of them); `leads` are the warnings shown above the rows."""

    name: str
    title: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    compact: tuple[str, ...] = ()
    leads: list[str] = field(default_factory=list)

    def compact_columns(self) -> list[Column]:
        """Return the columns of the compact table, in the table's order (all of them without a compact set)."""
        return [c for c in self.columns if c.key in self.compact] if self.compact else list(self.columns)

    def select(self, keys: list[str] | tuple[str, ...]) -> list[Column]:
        """Return the first column and those named in `keys`, in the table's order."""
        return [c for i, c in enumerate(self.columns) if i == 0 or c.key in keys]

    def best_values(self, kind: RowKind = "harness", *, ranked_only: bool = False) -> dict[str, float]:
        """Return, per contest column, the winning value among the rows of `kind` (without the
        collapsed ones when `ranked_only`)."""
        best: dict[str, float] = {}
        for column in self.columns:
            if column.higher_is_better is None:
                continue
            values = [
                value
                for r in self.rows
                if r.kind == kind
                and not (ranked_only and r.collapsed)
                and column.key in r.cells
                and (value := r.cells[column.key].value) is not None
                and not math.isnan(value)
            ]
            if values:
                best[column.key] = max(values) if column.higher_is_better else min(values)
        return best

    def marks(self) -> dict[str, float]:
        """Return, per contest column, the value shown in bold: the best of the models that do not
        predict one class, where it is better than every floor's (a floor ahead is called out instead)."""
        models, floors = self.best_values(ranked_only=True), self.best_values("floor")
        higher = {c.key: c.higher_is_better for c in self.columns}
        return {
            key: value
            for key, value in models.items()
            if key not in floors or (value > floors[key] if higher[key] else value < floors[key])
        }

    def callouts(self) -> list[str]:
        """Return the warnings shown above the rows: floors ahead of every model, then the layout's own."""
        return self.floor_leads() + self.leads

    def floor_leads(self) -> list[str]:
        """Return a line per floor model that is ahead of every model on some column, naming them
        ("colour_forest (floor) is ahead of every model on test acc"): a warning the bold cells hide."""
        models, lines = self.best_values(), []
        for row in (r for r in self.rows if r.kind == "floor"):
            ahead = [
                c.header
                for c in self.columns
                if c.key in models
                and (value := row.cells.get(c.key, EMPTY).value) is not None
                and (value > models[c.key] if c.higher_is_better else value < models[c.key])
            ]
            if ahead:
                label = row.cells.get(self.columns[0].key, EMPTY).text
                lines.append(f"{label} is ahead of every model on {', '.join(ahead)}")
        return lines

    def frame(self) -> pd.DataFrame:
        """Return the table as data: one row per line, numbers where a cell has one, else its text
        (empty where the table shows nothing or '-')."""
        records = []
        for row in self.rows:
            record: dict[str, object] = {"row_kind": row.kind, "group": row.group}
            for column in self.columns:
                cell = row.cells.get(column.key, EMPTY)
                record[column.key] = (
                    cell.value if cell.value is not None else (cell.text if cell.text not in ("", "-") else None)
                )
            records.append(record)
        return pd.DataFrame(records, columns=["row_kind", "group", *(c.key for c in self.columns)])


def number(value: float | None, digits: int = 4, *, scale: float = 1.0) -> Cell:
    """Return a numeric cell shown with `digits` decimals after multiplying by `scale`; '-' for NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Cell("-")
    shown = value * scale
    return Cell(f"{shown:.{digits}f}", shown)


def count(value: float | int | None) -> Cell:
    """Return an integer cell with thousands separators."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Cell("-")
    return Cell(f"{int(value):,}", float(value))


def signed(value: float | None, digits: int) -> Cell:
    """Return a difference cell with an explicit sign."""
    if value is None or math.isnan(value):
        return Cell("-")
    return Cell(f"{value:+.{digits}f}", value)
