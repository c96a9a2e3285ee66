"""The figures a bench computes, kept at full precision beside the table it prints.

A bench records each figure (a rate, a wall time, a ratio, a count) as it computes it, prints its
table from the recorded values and, given `--figures PATH`, writes them all to a JSON file. Its
smoke test reads that file: it checks the bench's arithmetic on the exact values, and that the
table shows those values, instead of re-parsing rounded text.

Standard library only: bench/gpu.py imports this on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def add_figures_option(parser: argparse.ArgumentParser) -> None:
    """Add `--figures PATH` to a bench's arguments; returns nothing."""
    parser.add_argument(
        "--figures",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write every figure the bench computes, at full precision, to this JSON file",
    )


class Figures:
    """The figures of one bench run, a tree of names: `record` each one, `write` them at the end."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.tree: dict[str, Any] = {}

    def record(self, *names: str, value: T) -> T:
        """Record `value` (a number, a string, or a list or dict of them) under the nested `names`;
        returns `value` itself, so that what is printed is what was recorded."""
        if not names or not all(isinstance(name, str) for name in names):
            raise TypeError(f"a figure is named by strings (JSON keys), got {names!r}")
        node = self.tree
        for depth, name in enumerate(names[:-1]):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ValueError(f"{'/'.join(names[: depth + 1])} is a figure, not a group of figures")
        if names[-1] in node:
            # A figure recorded twice would leave the file saying only the later value.
            raise ValueError(f"figure {'/'.join(names)} is already recorded")
        node[names[-1]] = value
        return value

    def write(self) -> Path | None:
        """Write the figures as JSON to the path given (none: nothing); returns that path."""
        if self.path is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # json writes floats with repr's shortest exact digits, so the file holds the very values.
        self.path.write_text(json.dumps(self.tree, indent=2) + "\n")
        return self.path
