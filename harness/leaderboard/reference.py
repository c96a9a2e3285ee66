"""Published reference tables: the ```csv blocks of BASELINES.md §3, one named table per block, and
the tables read from a source's own result file (`EXTERNAL_TABLES`, committed by hand).

Every cell is kept as the string printed in BASELINES.md (`0.1`, `0.9750`, `20.0`, `NA` stay as
they are): these are the published numbers the leaderboard prints beside ours, so nothing here
parses or re-rounds them. Each table ends up with non-empty `source`, `dataset` and `protocol`
columns; where a block lacks one, the value comes from the prose around it (listed in
`REFERENCE_BLOCKS`) and the column is appended after the published ones, so every line of a written
CSV begins with the block's own line unchanged.

Regenerate `harness/leaderboard/published/` (CSVs and README) from the repository root with
`python -m harness.leaderboard.reference ../shared/BASELINES.md`.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# Package data: the published tables, installed with the package.
REFERENCE_DIR = Path(__file__).resolve().parent / "published"

# Columns every reference row must carry so the leaderboard can say where a number comes from and
# which reproduction may sit beside it.
REQUIRED_COLUMNS = ("source", "dataset", "protocol")

_HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s+(.*?)\s*$")
_CSV_FENCE = "```csv"
_FENCE = "```"


@dataclass(frozen=True)
class ReferenceBlock:
    """How one ```csv block of BASELINES.md is named, and the columns its prose supplies.

    A block is recognised by its section number and the set of its `table` cells. `added` maps a
    missing column to one value for every row, or to a value per `table` cell.
    """

    name: str
    section: str
    tables: frozenset[str]
    added: Mapping[str, str | Mapping[str, str]] = field(default_factory=dict)
    added_because: str = ""


_GUSA_4FOLD = "001's 4-fold validation on BACH part A (§1.3, §1.5)"

REFERENCE_BLOCKS = (
    ReferenceBlock("gusa_table1", "3.1", frozenset({"I"})),
    ReferenceBlock("gusa_table2_miou", "3.1", frozenset({"II"}), {"protocol": "gusa_4fold"}, _GUSA_4FOLD),
    ReferenceBlock("gusa_table3_class_auc", "3.1", frozenset({"III"}), {"protocol": "gusa_4fold"}, _GUSA_4FOLD),
    ReferenceBlock("gusa_table4_confusion", "3.1", frozenset({"IV"}), {"protocol": "gusa_4fold"}, _GUSA_4FOLD),
    ReferenceBlock(
        "glam_abstract",
        "3.2",
        frozenset({"abstract"}),
        {"protocol": "NA"},
        "mammography, not comparable (§3.2): no harness protocol reproduces it",
    ),
    ReferenceBlock("essex2023_idc", "3.3", frozenset({"text"})),
    ReferenceBlock(
        "karatayev2021_split",
        "3.4",
        frozenset({"I", "II"}),
        {"protocol": {"I": "karatayev2021_imbalanced", "II": "karatayev2021"}},
        "Table I is the imbalanced split of the torchvision models (§1.5 `karatayev2021_imbalanced`), "
        "Table II the proposed CNN's split (§1.5 `karatayev2021`)",
    ),
    ReferenceBlock("karatayev2021_table3", "3.4", frozenset({"III"})),
    ReferenceBlock("karatayev2021_table4", "3.4", frozenset({"IV"})),
    ReferenceBlock("karatayev2021_confusion", "3.4", frozenset({"confusion"})),
    ReferenceBlock("pis_cancernet", "3.5", frozenset({"tutorial_output"})),
    ReferenceBlock("amil_breakhis_bach", "3.6", frozenset({"NA"})),
    ReferenceBlock(
        "karatayev2021_related_work",
        "3.7",
        frozenset({"text"}),
        {"protocol": "NA"},
        "Janowczyk's own patch split, quoted for context only (§3.7): no harness protocol reproduces it",
    ),
)


@dataclass(frozen=True)
class ExternalTable:
    """A published table read from its source's own result file rather than from BASELINES.md:
    committed by hand with every cell as that file prints it, each row naming the file and commit."""

    name: str
    origin: str
    note: str


EXTERNAL_TABLES = (
    ExternalTable(
        "eva_leaderboard",
        "kaiko-ai/eva `tools/data/leaderboards/pathology.csv` at commit 73b61a79 (the data behind eva's "
        "docs/images/leaderboards/pathology.svg; its numbers unchanged since aac0bda5, 2025-04-10), "
        "display names from `tools/generate_leaderboard_plots.py`",
        "balanced accuracy per encoder on BACH (`BACH-A`) and BreakHis, the mean of 5 runs of eva's fixed "
        "head recipe on eva's validation part; `protocol` = `eva`; `harness_encoder` = the harness's "
        "encoder preset of the same weights, `NA` where it has none",
    ),
)


@dataclass(frozen=True)
class ExtractedTable:
    """One named reference table with where it came from in BASELINES.md."""

    block: ReferenceBlock
    heading: str
    frame: pd.DataFrame


def _read_csv_block(lines: list[str], fence_line: int, origin: str) -> pd.DataFrame:
    # The csv module rather than pandas.read_csv: pandas silently pads a row that is short of
    # fields with NaN, and a ragged row here means a transcription error.
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{origin}: line {fence_line}: ```csv block is empty")
    if len(set(header)) != len(header):
        raise ValueError(f"{origin}: line {fence_line}: ```csv block repeats a column name in {header}")
    body = []
    for row in reader:
        if len(row) != len(header):
            raise ValueError(
                f"{origin}: line {fence_line}: ```csv block is ragged: the row ending at line "
                f"{fence_line + reader.line_num} has {len(row)} fields, its header has {len(header)}"
            )
        body.append(row)
    return pd.DataFrame(body, columns=header, dtype=str)


def _csv_blocks(text: str, origin: str) -> list[tuple[str, str, int, pd.DataFrame]]:
    """Return (section number, heading, fence line, table) for every ```csv block, in file order."""
    blocks = []
    section, heading = "", ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if match := _HEADING.match(line):
            section, heading = match.group(1), line.lstrip("#").strip()
        elif line.strip() == _CSV_FENCE:
            fence_line = index + 1
            try:
                end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == _FENCE)
            except StopIteration:
                raise ValueError(f"{origin}: line {fence_line}: ```csv block is never closed") from None
            blocks.append((section, heading, fence_line, _read_csv_block(lines[index + 1 : end], fence_line, origin)))
            index = end
        index += 1
    return blocks


def _name_block(section: str, frame: pd.DataFrame, fence_line: int, origin: str) -> ReferenceBlock:
    if "table" not in frame.columns:
        raise ValueError(f"{origin}: line {fence_line}: ```csv block has no `table` column to name it by")
    tables = frozenset(frame["table"])
    for block in REFERENCE_BLOCKS:
        if block.section == section and block.tables == tables:
            return block
    raise ValueError(
        f"{origin}: line {fence_line}: no reference name for the ```csv block of §{section} with table "
        f"{sorted(tables)}; add one to harness.leaderboard.reference.REFERENCE_BLOCKS"
    )


def _add_columns(block: ReferenceBlock, frame: pd.DataFrame, fence_line: int, origin: str) -> pd.DataFrame:
    frame = frame.copy()
    for column, value in block.added.items():
        if column in frame.columns:
            raise ValueError(f"{origin}: line {fence_line}: block {block.name} already has a `{column}` column")
        if isinstance(value, str):
            frame[column] = value
            continue
        missing = set(frame["table"]) - set(value)
        if missing:
            raise ValueError(
                f"{origin}: line {fence_line}: no `{column}` for table {sorted(missing)} of block {block.name}"
            )
        frame[column] = [value[table] for table in frame["table"]]
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns or (frame[column] == "").any():
            raise ValueError(f"{origin}: line {fence_line}: block {block.name} does not give every row a `{column}`")
    return frame


def read_reference_blocks(baselines_md: Path) -> list[ExtractedTable]:
    """Return every ```csv block of `baselines_md` as a named table, in file order.

    Raises ValueError naming the block's line for a ragged, empty or unclosed block, a block no
    entry of `REFERENCE_BLOCKS` names, or one left without a source, dataset or protocol.
    """
    origin = str(baselines_md)
    extracted: list[ExtractedTable] = []
    for section, heading, fence_line, frame in _csv_blocks(baselines_md.read_text(encoding="utf-8"), origin):
        block = _name_block(section, frame, fence_line, origin)
        if any(table.block.name == block.name for table in extracted):
            raise ValueError(f"{origin}: line {fence_line}: a second ```csv block named {block.name}")
        extracted.append(ExtractedTable(block, heading, _add_columns(block, frame, fence_line, origin)))
    return extracted


def extract_reference_tables(baselines_md: Path) -> dict[str, pd.DataFrame]:
    """Return {table name: table of strings} for every ```csv block of `baselines_md`, in file order."""
    return {table.block.name: table.frame for table in read_reference_blocks(baselines_md)}


def write_reference_tables(tables: Mapping[str, pd.DataFrame], folder: Path) -> list[Path]:
    """Write each table to `folder/<name>.csv` and return the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in tables.items():
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False, lineterminator="\n")
        paths.append(path)
    return paths


def load_reference(name: str, folder: Path = REFERENCE_DIR) -> pd.DataFrame:
    """Return the reference table `name` from `folder`, every cell as the string printed."""
    path = folder / f"{name}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.csv"))
        raise FileNotFoundError(f"no reference table {name!r} in {folder} (there: {', '.join(known) or 'none'})")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def render_readme(extracted: list[ExtractedTable]) -> str:
    """Return the README of the reference folder: each file, its section, rows and added columns."""
    lines = [
        "# Published reference tables",
        "",
        'One CSV per ```csv block of `../shared/BASELINES.md` §3 "Published results", written by',
        "`harness/leaderboard/reference.py`. Do not edit them by hand: from the repository root run",
        "",
        "```bash",
        "python -m harness.leaderboard.reference ../shared/BASELINES.md",
        "```",
        "",
        "and commit the result; `tests/leaderboard/test_reference.py` fails when these files differ from a fresh",
        "extraction. Every cell is the string printed in BASELINES.md (no re-rounding; `NA` = not",
        "reported), columns named `derived_*` are ours, not published. Where a block has no `dataset` or",
        "`protocol` column, one is appended after the published columns, from the prose around the",
        "block (last column of the table below); `protocol` is the harness protocol of BASELINES.md",
        "§1.5 a reproduction must use to sit beside the row, `NA` where none can.",
        "",
        "| file | BASELINES.md section | rows | columns added from the prose |",
        "|---|---|---:|---|",
    ]
    for table in extracted:
        added = "; ".join(
            f"`{column}` = "
            + (f"`{value}`" if isinstance(value, str) else ", ".join(f"`{v}` (table {k})" for k, v in value.items()))
            for column, value in table.block.added.items()
        )
        if added:
            added += f": {table.block.added_because}"
        lines.append(f"| `{table.block.name}.csv` | §{table.heading} | {len(table.frame)} | {added or '—'} |")
    lines += [
        "",
        "## Tables from their sources' own result files",
        "",
        "Not from BASELINES.md, and not written by the command above: committed by hand with every cell as",
        "the source's file prints it, each row naming that file (`source_file`) and commit (`source_commit`).",
        "",
        "| file | from | rows | what |",
        "|---|---|---:|---|",
        *(f"| `{t.name}.csv` | {t.origin} | {len(load_reference(t.name))} | {t.note} |" for t in EXTERNAL_TABLES),
    ]
    return "\n".join(lines) + "\n"


def write_reference_folder(baselines_md: Path, folder: Path = REFERENCE_DIR) -> list[Path]:
    """Extract every table of `baselines_md`, write the CSVs and README into `folder`, return the paths."""
    extracted = read_reference_blocks(baselines_md)
    paths = write_reference_tables({table.block.name: table.frame for table in extracted}, folder)
    readme = folder / "README.md"
    readme.write_text(render_readme(extracted), encoding="utf-8")
    return [*paths, readme]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m harness.leaderboard.reference",
        description="Regenerate harness/leaderboard/published/ from the ```csv blocks of BASELINES.md.",
    )
    parser.add_argument("baselines_md", type=Path, help="path to BASELINES.md (e.g. ../shared/BASELINES.md)")
    parser.add_argument("--out", type=Path, default=REFERENCE_DIR, help=f"folder to write (default {REFERENCE_DIR})")
    args = parser.parse_args(argv)
    if not args.baselines_md.is_file():
        parser.exit(2, f"error: {args.baselines_md}: no such file\n")
    try:
        paths = write_reference_folder(args.baselines_md, args.out)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    external = {f"{t.name}.csv" for t in EXTERNAL_TABLES}
    stale = sorted({p.name for p in args.out.glob("*.csv")} - {p.name for p in paths} - external)
    for path in paths:
        print(path)
    if stale:
        print(f"not from this extraction, delete them if they are no longer wanted: {', '.join(stale)}")


if __name__ == "__main__":
    main()
