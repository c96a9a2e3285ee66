"""What an indexer returns: a manifest and what it had to say about the files it walked."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class IndexResult:
    """A manifest plus the problems (bad files) and warnings the indexer reports."""

    manifest: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
