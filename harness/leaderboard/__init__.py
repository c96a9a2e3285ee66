"""Leaderboard: MLflow runs -> the seeds' comparison tables beside the published numbers, with
intervals, paired tests and costs, as Markdown, LaTeX, CSV and one HTML page with plots.

Data flows one way: `runs` reads MLflow, `evidence` computes the statistics, `layouts` fills a
`ReportTable` per table, `render` and `plots` write it out, `check` holds it to a tolerance.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import InputError
from harness.leaderboard.check import out_of_tolerance
from harness.leaderboard.layouts import LAYOUTS, LayoutOptions, build_table
from harness.leaderboard.plots import all_figures
from harness.leaderboard.render import to_html, to_latex, to_markdown
from harness.leaderboard.runs import RunSet, collect_runs
from harness.leaderboard.table import MAIN_ROWS, Column, ReportTable

__all__ = [
    "LAYOUTS",
    "Leaderboard",
    "LayoutOptions",
    "build_leaderboard",
    "collect_runs",
    "out_of_tolerance",
    "paper_columns",
    "write_leaderboard",
]


@dataclass
class Leaderboard:
    """The compared runs and the tables laid out from them."""

    runs: RunSet
    tables: list[ReportTable]
    options: LayoutOptions = field(default_factory=LayoutOptions)

    @property
    def table(self):
        """Return the summary layout's harness and floor rows as a DataFrame (one per baseline, with
        its winning run), whichever tables were asked for: what registered winners are tagged with."""
        summary = next((t for t in self.tables if t.name == "summary"), None)
        frame = (summary or build_table("summary", self.runs, self.options)).frame()
        return (
            frame[frame.row_kind.isin(MAIN_ROWS)]
            .drop(columns=["row_kind", "group"])
            .rename(columns={"model": "baseline"})
            .reset_index(drop=True)
        )

    def intro(self) -> list[str]:
        """Return the lines that say what the tables cover."""
        return [
            f"Experiments: {', '.join(self.runs.experiments)}; tracking store: {self.runs.tracking_uri}.",
            f"Split {self.runs.split_hash[:16]}: only runs that saw this split are compared.",
        ]


def build_leaderboard(
    tracking_uri: str,
    experiments: str | list[str],
    *,
    tables: list[str] | tuple[str, ...] = ("summary",),
    split_hash: str | None = None,
    options: LayoutOptions | None = None,
) -> Leaderboard:
    """Return the leaderboard of `experiments` on one split, laid out as `tables`."""
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    runs = collect_runs(tracking_uri, names, split_hash=split_hash)
    options = options or LayoutOptions()
    return Leaderboard(runs, [build_table(name, runs, options) for name in tables], options)


def paper_columns(table: ReportTable, latex_columns: list[str] | None = None) -> list[Column]:
    """Return the columns of a table's paper version: the model and `latex_columns` where given,
    else its compact columns."""
    return table.select(latex_columns) if latex_columns else table.compact_columns()


def _check_columns(tables: list[ReportTable], keys: list[str]) -> None:
    """Raise InputError for a key of `--latex-columns` that names a column of none of `tables`."""
    known = list(dict.fromkeys(c.key for t in tables for c in t.columns))
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise InputError(
            f"--latex-columns {unknown[0]!r}: not a column of these tables; expected some of: {', '.join(known)}"
        )


def write_leaderboard(
    board: Leaderboard, results_dir: Path, *, html: bool = True, latex_columns: list[str] | None = None
) -> list[Path]:
    """Write each table as <name>.md, .csv, .tex (a paper's column: the compact columns, or the
    model and `latex_columns`) and .full.tex (every column), all of them as leaderboard.md and
    leaderboard.tex (the paper versions) and (with plots) leaderboard.html, and the figures under
    figures/; returns the written files.

    Everything is written to a scratch folder first and moved in at the end, so an error leaves
    the previous leaderboard untouched."""
    _check_columns(board.tables, latex_columns or [])
    results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=results_dir, prefix=".leaderboard-") as scratch:
        folder = Path(scratch)
        written = []
        papers = [to_latex(t, columns=paper_columns(t, latex_columns)) for t in board.tables]
        for table, paper in zip(board.tables, papers):
            (folder / f"{table.name}.md").write_text(to_markdown(table))
            (folder / f"{table.name}.tex").write_text(paper)
            (folder / f"{table.name}.full.tex").write_text(to_latex(table))
            table.frame().to_csv(folder / f"{table.name}.csv", index=False)
            written += [f"{table.name}.{ext}" for ext in ("md", "tex", "full.tex", "csv")]
        title = f"# Leaderboard: {', '.join(board.runs.experiments)}"
        (folder / "leaderboard.md").write_text(
            "\n".join([title, "", *board.intro(), ""] + [to_markdown(t) for t in board.tables])
        )
        (folder / "leaderboard.tex").write_text("\n".join(papers))
        written += ["leaderboard.md", "leaderboard.tex"]
        if html:
            figures = all_figures(board.runs, folder / "figures")
            page = to_html(title.removeprefix("# "), board.intro(), board.tables, figures)
            (folder / "leaderboard.html").write_text(page)
            written += ["leaderboard.html", *(f"figures/{path.name}" for path, _ in figures)]
        if html and (results_dir / "figures").exists():
            shutil.rmtree(results_dir / "figures")
        for name in written:
            target = results_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            (folder / name).replace(target)
    return [results_dir / name for name in written]
