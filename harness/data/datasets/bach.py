"""BACH part A (ICIAR 2018) microscopy images (BASELINES.md §1.3).

Layout: `[ICIAR2018_BACH_Challenge/]Photos/<Normal|Benign|InSitu|Invasive>/<n|b|is|iv><NNN>.tif`,
2048x1536 RGB, with an optional `microscopy_ground_truth.csv` ("<file>,<Class>", no header).
Part A publishes no patient ids, so each image is its own group: image-level folds may put
images of one patient on both sides of a split, and the manifest says so in `flags`.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness.errors import InputError

from ..records import IndexResult, UnreadableImage, collect, decode
from ..synthetic import blob_image
from ._registry import Dataset, DatasetSpec, NamedProtocol, PublishedProtocol, register_dataset

DATASET = "bach"
# 001's table order; torchvision's ImageFolder would sort alphabetically instead (§1.3 pitfall).
CLASS_NAMES = ("Normal", "Benign", "InSitu", "Invasive")
PREFIX = {"Normal": "n", "Benign": "b", "InSitu": "is", "Invasive": "iv"}
NAME_PATTERN = re.compile(r"^(?P<prefix>n|b|is|iv)(?P<num>\d{3})\.tif$", re.ASCII)
SIZE = (2048, 1536)  # width x height of every published image
PUBLISHED_PER_CLASS = 100
# eva's BACH protocol (kaiko-ai/eva src/eva/vision/data/datasets/classification/bach.py at
# 73b61a797bfda8daf232f6abea2bc87ac614589c): its validation part is these [start, end) ranges of the
# 400 images in ImageFolder's order (class folders alphabetically, files by name), chosen on eva's
# side to keep patients apart; the rest, 268 images, is its training part.
EVA_SOURCE = "kaiko-ai/eva src/eva/vision/data/datasets/classification/bach.py@73b61a79"
EVA_VAL_RANGES = ((41, 59), (60, 90), (139, 169), (240, 258), (260, 273), (345, 368))
EVA_COUNTS = {"train": 268, "test": 132}
LAYOUT = "[ICIAR2018_BACH_Challenge/]Photos/<Normal|Benign|InSitu|Invasive>/<n|b|is|iv>NNN.tif"


def photos_dir(root: Path) -> Path:
    """Return the `Photos` folder under `root`, with or without the challenge's enclosing folder."""
    for candidate in (root / "Photos", root / "ICIAR2018_BACH_Challenge" / "Photos", root):
        if any((candidate / name).is_dir() for name in CLASS_NAMES):
            return candidate
    raise InputError(f"{root}: no BACH class folders found (expected {LAYOUT})")


def _ground_truth(photos: Path) -> dict[str, str]:
    table = photos / "microscopy_ground_truth.csv"
    if not table.is_file():
        return {}
    with table.open(newline="") as file:
        return {row[0].strip(): row[1].strip() for row in csv.reader(file) if len(row) >= 2}


def _inspect(path: Path, class_name: str, truth: dict[str, str]) -> tuple[dict[str, object] | None, str | None]:
    match = NAME_PATTERN.match(path.name)
    if match is None:
        return None, f"name does not match {LAYOUT}"
    if match["prefix"] != PREFIX[class_name]:
        return (
            None,
            f"prefix {match['prefix']!r} disagrees with class folder {class_name!r} (expected {PREFIX[class_name]!r})",
        )
    if truth and truth.get(path.name, class_name) != class_name:
        return None, f"microscopy_ground_truth.csv says {truth[path.name]!r}, the folder says {class_name!r}"
    try:
        image = decode(path)
    except UnreadableImage as exc:
        return None, str(exc)
    flags = ["no_patient_id", *image.off_layout(SIZE)]
    return {
        "path": str(path),
        "rel_path": f"Photos/{class_name}/{path.name}",
        "label": CLASS_NAMES.index(class_name),
        "class_name": class_name,
        "patient_id": path.stem,
        "dataset": DATASET,
        "width": image.width,
        "height": image.height,
        "digest": image.digest,
        "flags": ";".join(flags),
    }, None


def index_bach(
    root: Path,
    *,
    roi_dir: Path | None = None,
    allow_subset: bool = False,
    skip_bad: bool = False,
    show_progress: bool = False,
) -> IndexResult:
    """Walk a BACH part A tree and return its manifest, with `roi_mask_path` when `roi_dir` is given.

    Bad files and bad or missing masks raise InputError naming each path, unless `skip_bad`.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset root is not a directory (expected {LAYOUT})")
    # Resolved once, so every path lies below the root even through a symlinked class folder.
    photos = photos_dir(root.resolve())
    truth = _ground_truth(photos)
    files = [(p, c) for c in CLASS_NAMES for p in sorted((photos / c).glob("*.tif*"))]
    if not files:
        raise InputError(f"{root}: no BACH images found (expected {LAYOUT})")
    result = collect(
        files,
        lambda item: _inspect(*item, truth),
        lambda item: item[0],
        what="BACH images",
        roi_dir=roi_dir,
        skip_bad=skip_bad,
        show_progress=show_progress,
    )
    manifest = result.manifest
    counts = manifest.class_name.value_counts()
    if not allow_subset and any(counts.get(c, 0) != PUBLISHED_PER_CLASS for c in CLASS_NAMES):
        found = ", ".join(f"{c} {counts.get(c, 0)}" for c in CLASS_NAMES)
        raise InputError(
            f"{root}: found {found}; BACH part A has 100 images per class (BASELINES.md §1.3). "
            "For a sample set dataset.allow_subset: true (CLI: --allow-subset)"
        )
    result.warnings.append("BACH part A has no patient ids: each image is its own group, so folds may share patients")
    return result


def write_synthetic_bach(
    root: Path, *, per_class: int = 6, size: tuple[int, int] = (192, 256), masks: bool = True, seed: int = 0
) -> tuple[Path, Path | None]:
    """Write a BACH part A tree of real TIFF files (and RoI mask PNGs); returns (root, mask dir).

    Images are smaller than the published 2048x1536 to keep tests fast; the indexer flags their size.
    """
    rng = np.random.default_rng(seed)
    photos = root / "ICIAR2018_BACH_Challenge" / "Photos"
    mask_dir = root / "roi_masks" if masks else None
    rows = []
    for label, name in enumerate(CLASS_NAMES):
        (photos / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_class + 1):
            image, mask = blob_image(rng, size[0], size[1], label, len(CLASS_NAMES))
            file = f"{PREFIX[name]}{i:03d}.tif"
            Image.fromarray(image).save(photos / name / file)
            rows.append(f"{file},{name}")
            if mask_dir is not None:
                mask_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask * 255).save(mask_dir / f"{Path(file).stem}.png")
    (photos / "microscopy_ground_truth.csv").write_text("\n".join(rows) + "\n")
    return root, mask_dir


def eva_position(class_name: str, file_name: str) -> int | None:
    """Return an image's index in eva's order of the 400 (100 x the rank of its class folder among
    the four sorted by name, plus its number - 1); None for a name outside the published 001-100."""
    match = NAME_PATTERN.match(file_name)
    if match is None or not 1 <= int(match["num"]) <= PUBLISHED_PER_CLASS:
        return None
    return PUBLISHED_PER_CLASS * sorted(CLASS_NAMES).index(class_name) + int(match["num"]) - 1


def eva_assign(manifest: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Return the images of eva's 400 and which of them lie in eva's validation part; labels stay
    the harness's (the same four classes)."""
    positions = [eva_position(c, Path(p).name) for c, p in zip(manifest.class_name, manifest.rel_path)]
    kept = manifest[[p is not None for p in positions]].reset_index(drop=True)
    at = np.array([p for p in positions if p is not None], dtype=np.int64)
    return kept, np.array([any(lo <= p < hi for lo, hi in EVA_VAL_RANGES) for p in at], dtype=bool)


EVA = NamedProtocol(
    source=EVA_SOURCE,
    description="eva's BACH protocol: the 400 part A images, six index ranges of them (132) as the test part",
    label="four_class",
    fixes={},
    counts=EVA_COUNTS,
    assign=eva_assign,
)


def _index(spec: DatasetSpec, show_progress: bool) -> IndexResult:
    return index_bach(
        spec.root,
        roi_dir=spec.roi_dir,
        allow_subset=spec.allow_subset,
        skip_bad=spec.skip_bad,
        show_progress=show_progress,
    )


def _synthesise(out: Path, seed: int) -> str:
    _, masks = write_synthetic_bach(out, seed=seed)
    return f"synthetic BACH tree written to {out}, RoI masks in {masks}"


BACH = register_dataset(
    Dataset(
        name=DATASET,
        layout=LAYOUT,
        protocol=PublishedProtocol(
            source="BASELINES.md §1.3", counts={"per_class": PUBLISHED_PER_CLASS}, patient_ids=False
        ),
        labels={"four_class": CLASS_NAMES},
        storage="images",
        # 001's working resolution, 512x384 (height, width = 384, 512).
        size=(384, 512),
        input_kinds=frozenset({"image", "bag"}),
        index=_index,
        synthesise=_synthesise,
        options=frozenset({"roi_dir", "roi_fallback", "image_size", "stain"}),
        protocols={"eva": EVA},
    )
)
