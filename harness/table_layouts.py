"""The names of the leaderboard's table layouts: what an experiment file's `leaderboard.tables` and
`harness leaderboard --table` may name (harness/leaderboard/layouts/ has one module per layout,
and tests/leaderboard/test_layouts.py holds the two equal). A module of its own, so the `harness`
command names them without importing the model zoo (torch, timm) at start."""

from __future__ import annotations

from typing import Literal, get_args

TableLayout = Literal["summary", "gusa-table1", "gusa-table2", "gusa-table3", "gusa-table4", "idc", "breakhis", "eva"]
TABLE_LAYOUTS: tuple[str, ...] = get_args(TableLayout)
