"""The Kaggle IDC patch layout (BASELINES.md §1.1): `<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<c>.png`.

This module knows the layout and its published facts, and nothing about training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image
from rich.progress import track

from harness.errors import InputError

from ..records import IndexResult, UnreadableImage, decode, files_under
from ..synthetic import synthetic_patch
from ._registry import Dataset, DatasetSpec, PublishedProtocol, register_dataset

DATASET = "idc"
CLASS_NAMES = ("non_idc", "idc")
PATCH_SIZE = 50
# re.ASCII: `\d` alone also matches other scripts' digits, which int() reads as numbers.
NAME_PATTERN = re.compile(r"^(?P<pid>\d+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<c>[01])\.png$", re.ASCII)
LAYOUT = "<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<0|1>.png"
# Verified totals of the full release (BASELINES.md §1.1); a sample must say allow_subset.
PUBLISHED_TOTALS = {"patches": 277_524, "class_0": 198_738, "class_1": 78_786, "patients": 279}


def _inspect(path: Path) -> tuple[dict[str, object] | None, str | None]:
    """Return (manifest row, None) for a good patch or (None, reason) for a bad one."""
    match = NAME_PATTERN.match(path.name)
    if match is None:
        return None, f"name does not match {LAYOUT}"
    pid, label = match["pid"], int(match["c"])
    if path.parent.name != match["c"]:
        return None, f"class{label} in the name disagrees with class folder {path.parent.name!r}"
    if path.parent.parent.name != pid:
        return None, f"patient {pid} in the name disagrees with patient folder {path.parent.parent.name!r}"
    try:
        image = decode(path)
    except UnreadableImage as exc:
        return None, str(exc)
    width, height, mode = image.width, image.height, image.mode
    if width > PATCH_SIZE or height > PATCH_SIZE:
        return None, f"is {width}x{height}, larger than the {PATCH_SIZE}x{PATCH_SIZE} patches of the release"
    x, y = int(match["x"]), int(match["y"])
    flags = []
    if (width, height) != (PATCH_SIZE, PATCH_SIZE):
        flags.append("edge_patch")
    if mode != "RGB":
        flags.append(f"mode_{mode}")
    if x % PATCH_SIZE != 1 or y % PATCH_SIZE != 1:
        # x, y = 1 (mod 50) holds on the shared sample only (unverified for the release): record, don't trust.
        flags.append("off_grid")
    return {
        "path": str(path),
        "rel_path": f"{pid}/{label}/{path.name}",
        "label": label,
        "class_name": CLASS_NAMES[label],
        "patient_id": pid,
        "dataset": DATASET,
        "x": x,
        "y": y,
        "width": width,
        "height": height,
        "digest": image.digest,
        "flags": ";".join(flags),
    }, None


def _check_totals(manifest: pd.DataFrame, root: Path) -> None:
    found = {
        "patches": len(manifest),
        "class_0": int((manifest.label == 0).sum()),
        "class_1": int((manifest.label == 1).sum()),
        "patients": manifest.patient_id.nunique(),
    }
    if found != PUBLISHED_TOTALS:
        raise InputError(
            f"{root}: found {found['patches']:,} patches ({found['class_0']:,}/{found['class_1']:,}) of "
            f"{found['patients']} patients; the full IDC release has 277,524 (198,738/78,786) of 279 "
            "(BASELINES.md §1.1). For a sample set dataset.allow_subset: true (CLI: --allow-subset)"
        )


def _walk(files: list[Path], problems: list[str], show_progress: bool) -> tuple[list[dict[str, object]], int]:
    """Inspect every file, appending bad ones to `problems`; returns one row per file name and how
    many byte-identical duplicates were dropped. A name whose copies differ in bytes raises
    InputError naming both paths: which copy is the release's cannot be told, so even skip_bad stops."""
    rows: dict[str, dict[str, object]] = {}
    duplicates, conflicts = 0, []
    for path in track(files, description=f"indexing {len(files):,} IDC patches", disable=not show_progress):
        row, reason = _inspect(path)
        if row is None:
            problems.append(f"{path}: {reason}")
        elif path.name not in rows:
            rows[path.name] = row
        elif rows[path.name]["digest"] == row["digest"]:
            # The Kaggle archive can hold every patient twice (top level and IDC_regular_ps50_idx5/).
            duplicates += 1
        else:
            conflicts.append(f"{rows[path.name]['path']} and {path}: same file name, different bytes")
    if conflicts:
        raise InputError("\n".join(conflicts))
    return list(rows.values()), duplicates


def index_idc(
    root: Path,
    *,
    allow_subset: bool = False,
    skip_bad: bool = False,
    edge_patches: Literal["pad", "drop"] = "pad",
    show_progress: bool = False,
) -> IndexResult:
    """Walk an IDC tree (with or without `IDC_regular_ps50_idx5/`) and return its manifest.

    Every file is read once, digested and decoded. Bad files (wrong name, name/folder disagreement,
    undecodable) raise InputError listing each path, unless `skip_bad`, which leaves them out and
    reports them. A file name found twice is dropped only when both copies have the same bytes;
    otherwise both paths are reported (InputError, whatever `skip_bad` says).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset root is not a directory (expected an IDC tree {LAYOUT})")
    files = files_under(root, "*.png")
    if not files:
        raise InputError(f"{root}: no IDC patches found (expected PNG files laid out as {LAYOUT})")
    result = IndexResult(manifest=pd.DataFrame())
    rows, duplicates = _walk(files, result.problems, show_progress)
    if result.problems and not skip_bad:
        raise InputError("\n".join(result.problems))
    if duplicates:
        result.warnings.append(
            f"dropped {duplicates:,} byte-identical duplicates (the archive's second copy of the tree)"
        )
    manifest = pd.DataFrame(rows)
    if manifest.empty:
        raise InputError(f"{root}: none of {len(files):,} PNG files is a valid IDC patch")
    if edge_patches == "drop":
        edge = manifest["flags"].str.contains("edge_patch")
        result.warnings.append(f"dropped {int(edge.sum())} edge patches (edge_patches: drop)")
        manifest = manifest[~edge]
    result.manifest = manifest.sort_values("rel_path").reset_index(drop=True)
    if not allow_subset:
        _check_totals(result.manifest, root)
    return result


def write_synthetic_idc(
    root: Path,
    *,
    patients: int = 20,
    patches_per_class: tuple[int, int] = (12, 8),
    edge_patches: int = 1,
    enclosing_folder: bool = False,
    seed: int = 0,
) -> Path:
    """Write an IDC tree under `root` and return the directory to index.

    Patient ids start at 90000 so they never collide with real ones. `edge_patches` patches of the
    first patient are cut to 50x35, like the border patches of the release.
    """
    rng = np.random.default_rng(seed)
    base = root / "IDC_regular_ps50_idx5" if enclosing_folder else root
    for p in range(patients):
        pid = str(90000 + p)
        tint = rng.normal(0, 3, 3)
        for label, count in enumerate(patches_per_class):
            folder = base / pid / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                x, y = 1 + 50 * i, 1 + 50 * (label * 100 + p)
                pixels = synthetic_patch(rng, label, tint, size=PATCH_SIZE)
                if p == 0 and label == 0 and i < edge_patches:
                    pixels = pixels[:35]
                Image.fromarray(pixels).save(folder / f"{pid}_idx5_x{x}_y{y}_class{label}.png")
    return root


def _index(spec: DatasetSpec, show_progress: bool) -> IndexResult:
    return index_idc(
        spec.root,
        allow_subset=spec.allow_subset,
        skip_bad=spec.skip_bad,
        edge_patches=spec.edge_patches,
        show_progress=show_progress,
    )


def _synthesise(out: Path, seed: int) -> str:
    write_synthetic_idc(out, seed=seed)
    return f"synthetic IDC tree with 20 patients written to {out}"


IDC = register_dataset(
    Dataset(
        name=DATASET,
        layout=LAYOUT,
        protocol=PublishedProtocol(source="BASELINES.md §1.1", counts=PUBLISHED_TOTALS),
        labels={"binary": CLASS_NAMES},
        storage="patches",
        size=(PATCH_SIZE, PATCH_SIZE),
        input_kinds=frozenset({"image"}),
        index=_index,
        synthesise=_synthesise,
        options=frozenset({"edge_patches"}),
    )
)
