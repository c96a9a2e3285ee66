"""What the leaderboard page says beyond its numbers: a floor that beats every model is called out,
and the Pareto plot's parameter axis never prints labels over each other."""

from __future__ import annotations

import itertools

import pytest

from harness.figures import pyplot
from harness.leaderboard.plots import params_axis
from harness.leaderboard.render import to_html, to_markdown
from harness.leaderboard.table import Cell, Column, ReportTable, Row


def _table(floor_accuracy: float) -> ReportTable:
    columns = [
        Column("model", "model"),
        Column("test_accuracy", "test acc", higher_is_better=True),
        Column("test_auc", "test AUC", higher_is_better=True),
        Column("best_run_id", "run"),
    ]

    def row(kind: str, name: str, accuracy: float, auc: float) -> Row:
        cells = {"model": Cell(name), "test_accuracy": Cell(f"{accuracy:.4f}", accuracy)}
        cells |= {"test_auc": Cell(f"{auc:.4f}", auc), "best_run_id": Cell(f"id-{name}")}
        return Row(kind, name, cells)

    rows = [row("harness", "resnet18", 0.8333, 0.90), row("harness", "cancernet", 0.80, 0.95)]
    rows.append(row("floor", "colour_forest (floor)", floor_accuracy, 0.85))
    return ReportTable("summary", "t", columns, rows)


def test_a_floor_ahead_of_every_model_is_called_out_on_the_page_and_in_markdown() -> None:
    table = _table(0.9127)
    line = "colour_forest (floor) is ahead of every model on test acc"
    assert table.floor_leads() == [line]
    assert f'<p class="lead">{line}</p>' in to_html("t", [], [table], [])
    assert f"- **{line}**" in to_markdown(table)
    assert _table(0.83).floor_leads() == []


def test_the_page_moves_run_ids_under_the_table() -> None:
    page = to_html("t", [], [_table(0.5)], [])
    assert "<th>run</th>" not in page and "<code>id-resnet18</code>" in page


def _labels(values: list[float], axis=params_axis) -> list:
    """Return the window boxes of the x tick labels (major and minor) drawn for `values`."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2), dpi=110)
    ax.scatter(values, [0.5] * len(values))
    axis(ax, values)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = ax.get_xticklabels() + ax.get_xticklabels(minor=True)
    boxes = [t.get_window_extent(renderer) for t in labels if t.get_text() and t.get_visible()]
    plt.close(fig)
    lo, hi = fig.bbox.x0, fig.bbox.x1
    return [b for b in boxes if b.x1 > lo and b.x0 < hi]


@pytest.mark.parametrize("values", [[3.0e6, 4.0e6], [3.2e6, 3.9e6, 3.5e6], [1.1e5, 2.3e7, 1.3e8]])
def test_parameter_axis_labels_never_collide(values: list[float]) -> None:
    boxes = _labels(values)
    assert len(boxes) >= 2
    assert not [(a, b) for a, b in itertools.combinations(boxes, 2) if a.overlaps(b)]
