"""Formats of a ReportTable: Markdown (written, and printed with `--full`), a compact rich table for
the terminal, booktabs LaTeX (the compact columns for a paper, and the full table) with the best
model value in bold, CSV of the numbers, and one self-contained HTML page with every table
(compact, the full one a click away) and plot inlined."""

from __future__ import annotations

import base64
import html
import math
import textwrap
from pathlib import Path

from PIL import Image
from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from harness.leaderboard.table import BEST_LEGEND, EMPTY, MAIN_ROWS, Column, ReportTable, Row

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "¶": r"$^\P$",
    "ˢ": r"$^s$",
    "Δ": r"$\Delta$",
    "√": r"$\surd$",
    "τ": r"$\tau$",
    "≠": r"$\neq$",
    "§": r"\S{}",
}


def _is_best(row: Row, key: str, marks: dict[str, float]) -> bool:
    cell = row.cells.get(key, EMPTY)
    return (
        row.kind == "harness"
        and not row.collapsed
        and key in marks
        and cell.value is not None
        and not math.isnan(cell.value)
        and math.isclose(cell.value, marks[key])
    )


def _texts(row: Row, columns: list[Column]) -> list[str]:
    return [row.cells.get(c.key, EMPTY).text for c in columns]


def notes(table: ReportTable) -> list[str]:
    """Return the notes under a table: what bold means (where a column can be bold), then its footnotes."""
    contest = any(c.higher_is_better is not None for c in table.columns)
    return ([BEST_LEGEND] if contest else []) + table.footnotes


def to_markdown(table: ReportTable, *, heading: str = "##", columns: list[Column] | None = None) -> str:
    """Return the table as Markdown: a heading, the callouts, the rows (best model values in bold)
    and the notes; `columns` picks the columns shown (default: all)."""
    columns = columns or table.columns
    marks = table.marks()
    header = "| " + " | ".join(c.header for c in columns) + " |"
    rule = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(columns))) + "|"
    lines = [f"{heading} {table.name}: {table.title}", "", header, rule]
    for row in table.rows:
        texts = [f"**{t}**" if _is_best(row, c.key, marks) else t for c, t in zip(columns, _texts(row, columns))]
        if row.kind not in MAIN_ROWS:
            texts[0] = f"↳ {texts[0]}"
        lines.append("| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |")
    lines.append("")
    lines += [f"- **{lead}**" for lead in table.callouts()]
    lines += [f"- {note}" for note in notes(table)]
    return "\n".join(lines) + "\n"


# The columns of a compact table that hold words, not numbers: they wrap in a narrow terminal.
_TEXT_COLUMNS = ("model", "protocol")


def terminal_table(table: ReportTable, *, full_file: str, full_flag: str | None = None) -> list[RenderableType]:
    """Return what a terminal shows of a table: its heading, the compact columns as a rich table
    that wraps its cells to the console's width, the callouts, and where the full table is (the
    file, and the command that prints it when there is one)."""
    columns, marks = table.compact_columns(), table.marks()
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        if column.key in _TEXT_COLUMNS:
            # Words wrap, and keep 12 columns however narrow the screen.
            grid.add_column(column.header, justify="left", overflow="fold", min_width=12)
            continue
        # A number is never broken; its header wraps to the width of the numbers ("p Holm" over
        # "(acc)"), so that a narrow column of letters is not as wide as its name.
        widest = max((len(row.cells.get(column.key, EMPTY).text) for row in table.rows), default=0)
        header = textwrap.fill(column.header, max(widest, 6), break_long_words=False, break_on_hyphens=False)
        grid.add_column(header, justify="right", no_wrap=True)
    for row in table.rows:
        texts = [
            Text(t, style="bold" if _is_best(row, c.key, marks) else "") for c, t in zip(columns, _texts(row, columns))
        ]
        if row.kind not in MAIN_ROWS:
            texts = [Text(f"↳ {texts[0].plain}"), *texts[1:]]
            for text in texts:
                text.stylize("italic dim")
        grid.add_row(*texts, end_section=False)
    hidden = len(table.columns) - len(columns)
    more = f"{hidden} more columns and the notes" if hidden else "the notes"
    return [
        Text(f"## {table.name}: {table.title}", style="bold"),
        grid,
        *(Text(f"! {lead}", style="bold yellow") for lead in table.callouts()),
        Text(f"{more}: {full_file}" + (f" (or {full_flag})" if full_flag else ""), style="dim"),
    ]


def latex_escape(text: str) -> str:
    """Return `text` with LaTeX's special characters escaped and the table symbols in math mode."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: ReportTable, *, columns: list[Column] | None = None) -> str:
    """Return the table as a booktabs `table*` (the text width of a two-column paper), shrunk to the
    line where it is wider (needs graphicx): `columns` only (default: all), best model value per
    column in bold, a rule between models, published and difference rows in italics, callouts and
    notes under the tabular."""
    columns = columns if columns is not None else table.columns
    marks = table.marks()
    align = "ll" + "r" * (len(columns) - 2)
    lines = [
        "% needs \\usepackage{booktabs,graphicx}",
        "\\begin{table*}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{latex_escape(table.name)}: {latex_escape(table.title)}.}}",
        # \width is the tabular's natural width: shrink it to the line, never blow it up.
        "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(latex_escape(c.header) for c in columns) + " \\\\",
        "\\midrule",
    ]
    previous = None
    for row in table.rows:
        if previous is not None and row.kind in MAIN_ROWS:
            lines.append("\\addlinespace")
        cells = []
        for column, text in zip(columns, _texts(row, columns)):
            escaped = latex_escape(text)
            if _is_best(row, column.key, marks):
                escaped = f"\\textbf{{{escaped}}}"
            elif row.kind not in MAIN_ROWS and escaped:
                escaped = f"\\textit{{{escaped}}}"
            cells.append(escaped)
        lines.append(" & ".join(cells) + " \\\\")
        previous = row
    lines += ["\\bottomrule", "\\end{tabular}}"]
    below = [f"\\textbf{{{latex_escape(lead)}}}" for lead in table.callouts()]
    below += [latex_escape(note) for note in notes(table)]
    if below:
        lines.append("\\par\\smallskip\\footnotesize")
        lines += [line + "\\par" for line in below]
    lines.append("\\end{table*}")
    return "\n".join(lines) + "\n"


def _image(path: Path) -> str:
    """Return the figure inlined, drawn at its designed size (100 px per inch of the figure: the
    plots are saved at twice their resolution) and never wider than the page."""
    with Image.open(path) as image:
        width, dpi = image.width, image.info.get("dpi", (0, 0))[0]
    shown = width * 100 / dpi if dpi else width
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}" style="width:{shown:.0f}px">'


# Laid out for a laptop screen (1,400 px): the compact table fits the page; the full one scrolls
# inside its own box with the model column held in place; figures keep their designed size (text
# at its point size) up to the page's width.
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;padding:0 1.5rem;color:#222;max-width:80rem}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:separate;border-spacing:0;margin:1rem 0;font-size:.85rem}
th,td{padding:.25rem .5rem;text-align:right;border-bottom:1px solid #ddd;white-space:nowrap;background:#fff}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}
th:first-child,td:first-child{position:sticky;left:0;z-index:1;box-shadow:inset -1px 0 #ccc}
table.compact td:nth-child(2){white-space:normal;min-width:10rem}
thead th{border-bottom:2px solid #333}
tr.harness td,tr.floor td{border-top:1px solid #999}
tr.floor td{color:#777}
tr.published td,tr.difference td{color:#555;font-style:italic}
tr.published td:first-child,tr.difference td:first-child{padding-left:1.5rem}
td.best{font-weight:bold}
figure{margin:1.5rem 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
.notes li,details{font-size:.8rem;color:#444}
details.full{font-size:.85rem;color:#222}
p.lead{background:#fff4d6;border-left:4px solid #e0a800;padding:.4rem .8rem}
"""

# Columns of run ids: shown under the table (in its details), where their width costs nothing.
_ID_SUFFIX = "run_id"


def _html_rows(table: ReportTable, columns: list[Column], css: str) -> str:
    """Return `columns` of the table as an HTML table of class `css`, best model values in bold."""
    marks = table.marks()
    shown = [c for c in columns if not c.key.endswith(_ID_SUFFIX)]
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in shown)
    body = []
    for row in table.rows:
        cells = []
        for column in shown:
            best = ' class="best"' if _is_best(row, column.key, marks) else ""
            cells.append(f"<td{best}>{html.escape(row.cells.get(column.key, EMPTY).text)}</td>")
        kind = row.kind + (" collapsed" if row.collapsed else "")
        body.append(f'<tr class="{kind}">{"".join(cells)}</tr>')
    return (
        f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _html_table(table: ReportTable) -> str:
    """Return a table's section: callouts, the compact table, the full one a click away, run ids, notes."""
    compact = table.compact_columns()
    tables = _html_rows(table, compact, "compact")
    if len(compact) < len(table.columns):
        tables += (
            f'<details class="full"><summary>Full table: all {len(table.columns)} columns</summary>'
            f"{_html_rows(table, table.columns, 'full')}</details>"
        )
    leads = "".join(f'<p class="lead">{html.escape(line)}</p>' for line in table.callouts())
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes(table))
    return (
        f'<section class="leaderboard-table" id="{html.escape(table.name)}"><h2>{html.escape(table.name)}: '
        f'{html.escape(table.title)}</h2>{leads}{tables}{_run_ids(table)}<ul class="notes">{items}</ul></section>'
    )


def _run_ids(table: ReportTable) -> str:
    """Return the table's run-id columns as a details list under it (empty when it has none)."""
    items = [
        f"<li>{html.escape(row.cells.get(table.columns[0].key, EMPTY).text)}, {html.escape(c.header)}: "
        f"<code>{html.escape(row.cells[c.key].text)}</code></li>"
        for c in table.columns
        if c.key.endswith(_ID_SUFFIX)
        for row in table.rows
        if row.cells.get(c.key, EMPTY).text not in ("", "-")
    ]
    return f"<details><summary>MLflow run ids</summary><ul>{''.join(items)}</ul></details>" if items else ""


def to_html(title: str, intro: list[str], tables: list[ReportTable], figures: list[tuple[Path, str]]) -> str:
    """Return one self-contained HTML page: the tables, then every figure inlined as a PNG data URI."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p>{html.escape(line)}</p>" for line in intro),
        *(_html_table(t) for t in tables),
    ]
    if figures:
        parts.append('<section id="figures"><h2>Figures</h2>')
        parts += [
            f"<figure>{_image(path)}<figcaption>{html.escape(caption)}</figcaption></figure>"
            for path, caption in figures
        ]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
