"""The layouts an experiment file may name are exactly the layouts the leaderboard can build."""

from __future__ import annotations

import pytest

from harness.config import LeaderboardSpec
from harness.leaderboard import LAYOUTS
from harness.table_layouts import TABLE_LAYOUTS


def test_config_accepts_exactly_the_layouts_that_exist() -> None:
    assert set(TABLE_LAYOUTS) == set(LAYOUTS)
    assert len(TABLE_LAYOUTS) == len(set(TABLE_LAYOUTS))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_leaderboard_spec_validates_each_layout(name: str) -> None:
    assert LeaderboardSpec(tables=[name]).tables == [name]
