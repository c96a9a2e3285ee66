"""What the leaderboard page says beyond its numbers, and how wide it is: a floor that beats every
model is called out and takes bold away, the compact table and the full one, the terminal's and a
paper's widths, legible confusion matrices, and a parameter axis that never prints labels over each other."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from rich.console import Console

from harness.figures import pyplot
from harness.leaderboard import paper_columns
from harness.leaderboard.plots import confusion_panel, params_axis
from harness.leaderboard.render import terminal_table, to_html, to_latex, to_markdown
from harness.leaderboard.table import BEST_LEGEND, Cell, Column, ReportTable, Row


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


def test_bold_marks_a_model_only_where_it_beats_every_floor() -> None:
    # The floor's 0.9127 beats both models on test acc: no bold there, the floor is called out instead;
    # cancernet's AUC of 0.95 beats the floor's 0.85: bold, and the legend says what bold means.
    table = _table(0.9127)
    assert table.marks() == {"test_auc": 0.95}
    markdown = to_markdown(table)
    assert "**0.9500**" in markdown and "**0.8333**" not in markdown and "**0.9127**" not in markdown
    assert f"- {BEST_LEGEND}" in markdown and "best model" in BEST_LEGEND
    assert _table(0.5).marks() == {"test_accuracy": 0.8333, "test_auc": 0.95}


def _wide() -> ReportTable:
    """A table of 24 columns, of which the compact set names 5 (run ids among the rest)."""
    columns = [Column("model", "model"), Column("protocol", "protocol")]
    columns += [Column(f"m{i}", f"metric number {i}", higher_is_better=True) for i in range(21)]
    columns.append(Column("best_run_id", "run"))
    rows = [
        Row(
            "harness",
            name,
            {
                "model": Cell(name),
                "protocol": Cell("patient, Keras semantics, BN recal."),
                **{f"m{i}": Cell(f"{0.5 + i / 100 + k / 10:.4f}", 0.5 + i / 100 + k / 10) for i in range(21)},
                "best_run_id": Cell(f"{k:032x}"),
            },
        )
        for k, name in enumerate(("cancernet", "resnet18", "idc_cnn"))
    ]
    return ReportTable(
        "summary", "best trial per baseline", columns, rows, compact=("model", "protocol", "m0", "m3", "m20")
    )


def test_compact_columns_are_the_named_ones_in_table_order_and_the_full_table_keeps_all() -> None:
    table = _wide()
    assert [c.key for c in table.compact_columns()] == ["model", "protocol", "m0", "m3", "m20"]
    assert [c.key for c in table.select(["m20", "m1"])] == ["model", "m1", "m20"]
    assert len(to_markdown(table).splitlines()[2].split(" | ")) == 24
    compact = to_markdown(table, columns=table.compact_columns()).splitlines()[2]
    assert compact == "| model | protocol | metric number 0 | metric number 3 | metric number 20 |"
    assert ReportTable("t", "t", table.columns[:3]).compact_columns() == table.columns[:3]  # none named: all
    page = to_html("t", [], [table], [])
    assert page.count('<table class="compact">') == 1 and "Full table: all 24 columns" in page


def test_the_terminal_table_fits_100_columns_and_points_at_the_rest() -> None:
    console = Console(width=100, record=True)
    console.print(
        *terminal_table(_wide(), full_file="results/x/summary.md", full_flag="harness leaderboard --full"), sep="\n"
    )
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0] == "## summary: best trial per baseline"
    assert any(line.startswith("cancernet ") and "0.5000" in line and "0.7000" in line for line in lines)
    assert lines[-1] == "19 more columns and the notes: results/x/summary.md (or harness leaderboard --full)"


def test_latex_is_shrunk_to_the_line_where_wider_and_the_paper_table_holds_the_compact_columns() -> None:
    table = _wide()
    paper, full = to_latex(table, columns=table.compact_columns()), to_latex(table)
    assert "\\begin{tabular}{llrrr}" in paper and f"\\begin{{tabular}}{{ll{'r' * 22}}}" in full
    # Shrunk to the line where wider, never enlarged: \width is the tabular's natural width.
    shrink = "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%"
    assert shrink in paper and shrink in full and paper.count("{") == paper.count("}")
    assert "metric number 1 " not in paper and "metric number 1 " in full


def test_latex_columns_name_the_paper_tables_columns_after_the_model() -> None:
    table = _wide()
    assert [c.key for c in paper_columns(table, ["m2", "m1"])] == ["model", "m1", "m2"]
    assert paper_columns(table) == table.compact_columns()  # the command's test refuses an unknown key


def test_confusion_matrix_text_is_legible_and_contrasts_with_its_cell() -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.8, 3.6), dpi=100)
    confusion_panel(ax, np.array([[90.0, 10.0], [30.0, 70.0]]), ["non_idc", "idc"], "cancernet")
    colours = {t.get_text().split("\n")[0]: t.get_color() for t in ax.texts}
    sizes = {t.get_fontsize() for t in ax.texts}
    plt.close(fig)
    # White on the dark (high) cells, black on the light ones; 11 pt is 15 px at the page's 100 px per inch.
    assert colours == {"0.90": "white", "0.10": "black", "0.30": "black", "0.70": "white"}
    assert min(sizes) >= 11
