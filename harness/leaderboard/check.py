"""`harness leaderboard --check`: every reproduced number against its published one, within the
experiment file's tolerance, so a lab can keep a reproduction honest in CI."""

from __future__ import annotations

from collections.abc import Callable

from harness.leaderboard.table import ReportTable


def out_of_tolerance(tables: list[ReportTable], tolerance_of: Callable[[str], float]) -> tuple[int, list[str]]:
    """Return how many reproduced numbers were checked, and a line for each one further from its
    published number than the tolerance of its metric (absolute, on the 0-1 scale)."""
    checked, failures = 0, []
    for table in tables:
        for c in table.comparisons:
            checked += 1
            allowed = tolerance_of(c.metric)
            if abs(c.difference) > allowed + 1e-12:
                marker = " (published under another protocol)" if c.protocol_differs else ""
                failures.append(
                    f"{table.name}: {c.group}, {c.column}: reproduced {c.reproduced:.4f}, published {c.published:.4f} "
                    f"({c.source}){marker}; |difference| {abs(c.difference):.4f} > tolerance {allowed:g} of {c.metric}"
                )
    return checked, failures
