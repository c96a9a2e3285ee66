"""The tables of `harness leaderboard --table`: 001's Tables I-IV, the IDC and BreakHis comparisons,
eva's foundation-model leaderboard, and a summary for any experiment. Each harness row is followed
by every published row of the same model and dataset (harness/leaderboard/published/) and their
difference; a dagger marks a published row whose protocol is not the runs' (BASELINES.md §1.4-1.5).
Published rows are never ranked: bold marks the best harness row only.

One module per paper (`gusa`, `idc`, `breakhis`, `eva`) and `summary` for any experiment; what they
share lives in `_common`.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.leaderboard.layouts._common import LayoutOptions
from harness.leaderboard.layouts.breakhis import breakhis
from harness.leaderboard.layouts.eva import eva
from harness.leaderboard.layouts.gusa import gusa_table1, gusa_table2, gusa_table3, gusa_table4
from harness.leaderboard.layouts.idc import idc
from harness.leaderboard.layouts.summary import summary
from harness.leaderboard.runs import RunSet
from harness.leaderboard.table import ReportTable

__all__ = ["LAYOUTS", "LayoutOptions", "build_table"]

LAYOUTS: dict[str, Callable[[RunSet, LayoutOptions], ReportTable]] = {
    "summary": summary,
    "gusa-table1": gusa_table1,
    "gusa-table2": gusa_table2,
    "gusa-table3": gusa_table3,
    "gusa-table4": gusa_table4,
    "idc": idc,
    "breakhis": breakhis,
    "eva": eva,
}


def build_table(name: str, runset: RunSet, options: LayoutOptions | None = None) -> ReportTable:
    """Return layout `name` of `runset`, with the run set's notes as the last footnotes."""
    table = LAYOUTS[name](runset, options or LayoutOptions())
    table.footnotes += runset.notes
    return table
