"""Formats of a ReportTable: Markdown (printed and written), booktabs LaTeX with the best harness value
in bold, CSV of the numbers, and one self-contained HTML page with every table and plot inlined."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from harness.leaderboard.table import EMPTY, MAIN_ROWS, ReportTable, Row

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


def _is_best(table: ReportTable, row: Row, key: str, best: dict[str, float]) -> bool:
    cell = row.cells.get(key, EMPTY)
    return (
        row.kind == "harness"
        and key in best
        and cell.value is not None
        and not math.isnan(cell.value)
        and math.isclose(cell.value, best[key])
    )


def _texts(table: ReportTable, row: Row) -> list[str]:
    return [row.cells.get(c.key, EMPTY).text for c in table.columns]


def to_markdown(table: ReportTable, *, heading: str = "##") -> str:
    """Return the table as Markdown: a heading, the rows (best harness values in bold), the footnotes."""
    best = table.best_values()
    header = "| " + " | ".join(c.header for c in table.columns) + " |"
    rule = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(table.columns))) + "|"
    lines = [f"{heading} {table.name}: {table.title}", "", header, rule]
    for row in table.rows:
        texts = [
            f"**{t}**" if _is_best(table, row, c.key, best) else t for c, t in zip(table.columns, _texts(table, row))
        ]
        if row.kind not in MAIN_ROWS:
            texts[0] = f"↳ {texts[0]}"
        lines.append("| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |")
    lines.append("")
    lines += [f"- **{lead}**" for lead in table.floor_leads()]
    lines += [f"- {note}" for note in table.footnotes]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Return `text` with LaTeX's special characters escaped and the table symbols in math mode."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: ReportTable) -> str:
    """Return the table as a booktabs `table` float: best harness value per column in bold, a rule
    between models, published and difference rows in italics, footnotes under the tabular."""
    best = table.best_values()
    align = "ll" + "r" * (len(table.columns) - 2)
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{latex_escape(table.name)}: {latex_escape(table.title)}.}}",
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(latex_escape(c.header) for c in table.columns) + " \\\\",
        "\\midrule",
    ]
    previous = None
    for row in table.rows:
        if previous is not None and row.kind in MAIN_ROWS:
            lines.append("\\addlinespace")
        cells = []
        for column, text in zip(table.columns, _texts(table, row)):
            escaped = latex_escape(text)
            if _is_best(table, row, column.key, best):
                escaped = f"\\textbf{{{escaped}}}"
            elif row.kind not in MAIN_ROWS and escaped:
                escaped = f"\\textit{{{escaped}}}"
            cells.append(escaped)
        lines.append(" & ".join(cells) + " \\\\")
        previous = row
    lines += ["\\bottomrule", "\\end{tabular}"]
    if table.footnotes:
        lines.append("\\par\\smallskip\\footnotesize")
        lines += [latex_escape(note) + "\\par" for note in table.footnotes]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


# Laid out for a laptop screen (1,400 px): a table wider than the page scrolls inside its own box,
# and each figure (drawn at twice its resolution) takes the page's width.
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;padding:0 1.5rem;color:#222;max-width:80rem}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}
th,td{padding:.25rem .5rem;text-align:right;border-bottom:1px solid #ddd;white-space:nowrap}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}
thead th{border-bottom:2px solid #333}
tr.harness td,tr.floor td{border-top:1px solid #999}
tr.floor td{color:#777}
tr.published td,tr.difference td{color:#555;font-style:italic}
tr.published td:first-child,tr.difference td:first-child{padding-left:1.5rem}
td.best{font-weight:bold}
figure{margin:1.5rem 0}
figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}
.notes li,details{font-size:.8rem;color:#444}
p.lead{background:#fff4d6;border-left:4px solid #e0a800;padding:.4rem .8rem}
"""

# Columns of run ids: shown under the table (in its details), where their width costs nothing.
_ID_SUFFIX = "run_id"


def _html_table(table: ReportTable) -> str:
    best = table.best_values()
    shown = [c for c in table.columns if not c.key.endswith(_ID_SUFFIX)]
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in shown)
    body = []
    for row in table.rows:
        cells = []
        for column in shown:
            css = ' class="best"' if _is_best(table, row, column.key, best) else ""
            cells.append(f"<td{css}>{html.escape(row.cells.get(column.key, EMPTY).text)}</td>")
        body.append(f'<tr class="{row.kind}">{"".join(cells)}</tr>')
    leads = "".join(f'<p class="lead">{html.escape(line)}</p>' for line in table.floor_leads())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.footnotes)
    return (
        f'<section class="leaderboard-table" id="{html.escape(table.name)}"><h2>{html.escape(table.name)}: '
        f'{html.escape(table.title)}</h2>{leads}<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>{_run_ids(table)}<ul class="notes">{notes}</ul></section>'
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
