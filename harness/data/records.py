"""What an indexer returns, and the machinery every dataset module shares to build it."""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar, cast

import pandas as pd
from PIL import Image
from rich.progress import track

from harness.errors import InputError

from .masks import check_mask

T = TypeVar("T")
Row = dict[str, object]


@dataclass
class IndexResult:
    """A manifest plus the problems (bad files) and warnings the indexer reports."""

    manifest: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class UnreadableImage(ValueError):
    """A file that does not decode; the message says why."""


@dataclass(frozen=True)
class Decoded:
    """What indexing learns from one file: its true size, colour mode and content digest."""

    width: int
    height: int
    mode: str
    digest: str

    def off_layout(self, size: tuple[int, int]) -> list[str]:
        """Return the manifest flags of an image that is not `size` (width, height) or not RGB."""
        flags = [] if (self.width, self.height) == size else [f"size_{self.width}x{self.height}"]
        return flags + ([] if self.mode == "RGB" else [f"mode_{self.mode}"])


def files_under(root: Path, name: str) -> list[Path]:
    """Return the files below `root` (resolved) whose name matches the glob `name`, sorted.

    Symlinked folders are followed, as a tree assembled from links is meant to be read whole, and
    each real folder is read once, so a link back up the tree cannot loop. A folder that cannot be
    read raises its OSError rather than being skipped without a word.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for folder, subfolders, names in os.walk(root.resolve(), onerror=_raise, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        subfolders.sort()  # the first path to a folder reached twice is the same on every walk
        found += [Path(folder, n) for n in names if fnmatch.fnmatchcase(n, name)]
    return sorted(found)


def _raise(error: OSError) -> None:
    raise error


def content_digest(data: bytes) -> str:
    """Return the hex BLAKE2b-128 digest of a file's bytes (the manifest's `digest` column)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode(path: Path) -> Decoded:
    """Read the file once, digest its bytes and decode every pixel from them; returns the Decoded
    facts, or raises UnreadableImage."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return Decoded(im.width, im.height, im.mode, content_digest(data))
    except Exception as exc:  # PIL raises many types for damaged files
        raise UnreadableImage(f"does not decode as an image ({exc})") from None


def collect(
    items: Sequence[T],
    inspect: Callable[[T], tuple[Row | None, str | None]],
    path_of: Callable[[T], Path],
    *,
    what: str,
    roi_dir: Path | None = None,
    skip_bad: bool = False,
    show_progress: bool = False,
) -> IndexResult:
    """Inspect every item (attaching its RoI mask from `roi_dir`) and return the sorted manifest.

    Bad files, and bad or missing masks, raise InputError naming each path, unless `skip_bad`,
    which leaves them out and lists them in `problems`.
    """
    result = IndexResult(manifest=pd.DataFrame())
    rows = []
    for item in track(items, description=f"indexing {len(items):,} {what}", disable=not show_progress):
        path = path_of(item)
        row, reason = inspect(item)
        if row is not None and roi_dir is not None:
            mask = Path(roi_dir) / f"{path.stem}.png"
            # Every indexer puts the image's size in width and height.
            problem = check_mask(mask, cast(tuple[int, int], (row["width"], row["height"])))
            row["roi_mask_path"] = str(mask.resolve())
            if problem is not None:
                row, reason = None, f"RoI mask {mask}: {problem}"
        if row is None:
            result.problems.append(f"{path}: {reason}")
        else:
            rows.append(row)
    if result.problems and not skip_bad:
        raise InputError("\n".join(result.problems))
    if not rows:
        raise InputError(f"none of {len(items):,} files is a valid {what[:-1]}")
    manifest = pd.DataFrame(rows)
    if roi_dir is None:
        manifest["roi_mask_path"] = ""
    result.manifest = manifest.sort_values("rel_path").reset_index(drop=True)
    return result
