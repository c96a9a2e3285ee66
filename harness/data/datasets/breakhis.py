"""BreakHis (Spanhol et al. 2016), BASELINES.md §1.2.

Layout: `BreaKHis_v1/histology_slides/breast/<benign|malignant>/SOB/<subtype>/SOB_<B|M>_<T>_<YY>-<SLIDE>/
<MAG>X/SOB_<B|M>_<T>-<YY>-<SLIDE>-<MAG>-<SEQ>.png`, 700x460 RGB. The file name encodes everything;
each folder level must agree with it. Patients are grouped by the numeric core of the slide id
by default (folders such as 14-22549AB / CD / G may be one person; 70 groups), or by folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image

from harness.errors import InputError

from ..records import IndexResult, UnreadableImage, collect, decode, files_under
from ..synthetic import blob_image
from ._registry import Dataset, DatasetSpec, NamedProtocol, PublishedProtocol, register_dataset

DATASET = "breakhis"
BINARY_CLASSES = ("benign", "malignant")
SUBTYPES = {  # harness order of the 8-class label (§1.2)
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
SUBTYPE_CLASSES = tuple(SUBTYPES.values())
NAME_PATTERN = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<t>A|F|PT|TA|DC|LC|MC|PC)-(?P<yy>\d{2})-(?P<slide>\d+[A-Z]*)-(?P<mag>40|100|200|400)-(?P<seq>\d{3})\.png$",
    re.ASCII,
)
SIZE = (700, 460)
# Verified totals (§1.2): (benign, malignant) per magnification.
PUBLISHED = {40: (625, 1370), 100: (644, 1437), 200: (623, 1390), 400: (588, 1232)}
# eva's BreakHis protocol (kaiko-ai/eva src/eva/vision/data/datasets/classification/breakhis.py at
# 73b61a797bfda8daf232f6abea2bc87ac614589c): 40X only, the four subtypes with at least 7 patients in
# eva's order, and the slide ids (the file name's third '-' field) of its validation part.
EVA_SOURCE = "kaiko-ai/eva src/eva/vision/data/datasets/classification/breakhis.py@73b61a79"
EVA_CLASSES = ("TA", "MC", "F", "DC")
EVA_LABELS = tuple(SUBTYPES[code] for code in EVA_CLASSES)
EVA_VAL_SLIDES = frozenset(
    {"18842D", "19979", "15275", "15792", "16875", "3909", "5287", "16716"}
    | {"2773", "5695", "16184CD", "23060CD", "21998CD", "21998EF"}
)
EVA_COUNTS = {"train": 1132, "test": 339}
LAYOUT = "<benign|malignant>/SOB/<subtype>/SOB_<B|M>_<T>_<YY>-<SLIDE>/<MAG>X/SOB_<B|M>_<T>-<YY>-<SLIDE>-<MAG>-<SEQ>.png"


def numeric_core(patient: str) -> str:
    """Return `YY-digits` of a slide id: 14-22549AB -> 14-22549."""
    core = re.match(r"^\d{2}-\d+", patient, re.ASCII)
    if core is None:
        raise ValueError(f"slide id {patient!r} does not start with YY-digits")
    return core.group(0)


def _inspect(path: Path, label: str, group_by: str) -> tuple[dict[str, object] | None, str | None]:
    m = NAME_PATTERN.match(path.name)
    if m is None:
        return None, f"name does not match {LAYOUT}"
    benign = m["cls"] == "B"
    patient = f"{m['yy']}-{m['slide']}"
    expected = {
        "magnification folder": (path.parent.name, f"{m['mag']}X"),
        "patient folder": (path.parent.parent.name, f"SOB_{m['cls']}_{m['t']}_{patient}"),
        "subtype folder": (path.parents[2].name, SUBTYPES[m["t"]]),
        "class folder": (path.parents[4].name, BINARY_CLASSES[0 if benign else 1]),
    }
    for what, (found, wanted) in expected.items():
        if found != wanted:
            return None, f"{what} {found!r} disagrees with the name (expected {wanted!r})"
    try:
        image = decode(path)
    except UnreadableImage as exc:
        return None, str(exc)
    flags = image.off_layout(SIZE)
    subtype = SUBTYPES[m["t"]]
    return {
        "path": str(path),
        "rel_path": "/".join(path.parts[-6:]),
        "label": (0 if benign else 1) if label == "binary" else SUBTYPE_CLASSES.index(subtype),
        "class_name": BINARY_CLASSES[0 if benign else 1] if label == "binary" else subtype,
        "patient_id": numeric_core(patient) if group_by == "numeric_core" else patient,
        "patient_folder": patient,
        "subtype": subtype,
        "magnification": int(m["mag"]),
        "dataset": DATASET,
        "width": image.width,
        "height": image.height,
        "digest": image.digest,
        "flags": ";".join(flags),
    }, None


def _check_totals(manifest: pd.DataFrame, root: Path) -> None:
    differences = []
    for mag, (benign, malignant) in PUBLISHED.items():
        part = manifest[manifest.magnification == mag]
        found = (
            int((part.subtype.isin(SUBTYPE_CLASSES[:4])).sum()),
            int((part.subtype.isin(SUBTYPE_CLASSES[4:])).sum()),
        )
        if found != (benign, malignant):
            differences.append(f"{mag}X benign {found[0]}/{benign}, malignant {found[1]}/{malignant}")
    if differences:
        raise InputError(
            f"{root}: counts differ from the BreakHis release (found/published): {'; '.join(differences)}. "
            "For a sample set dataset.allow_subset: true (CLI: --allow-subset)"
        )


def index_breakhis(
    root: Path,
    *,
    label: Literal["binary", "subtype"] = "binary",
    group_by: Literal["numeric_core", "folder"] = "numeric_core",
    roi_dir: Path | None = None,
    allow_subset: bool = False,
    skip_bad: bool = False,
    show_progress: bool = False,
) -> IndexResult:
    """Walk a BreakHis tree (any folder above `<benign|malignant>/`) and return its manifest.

    Every file whose folders contradict its name, or that does not decode, is reported by path.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset root is not a directory (expected {LAYOUT})")
    # Only files in the published structure are kept, so a mask folder beside the images is not mistaken for them.
    files = [path for path in files_under(root, "SOB_*.png") if path.match("SOB/*/*/*X/SOB_*.png")]
    if not files:
        raise InputError(f"{root}: no BreakHis images found (expected {LAYOUT})")
    result = collect(
        files,
        lambda path: _inspect(path, label, group_by),
        lambda path: path,
        what="BreakHis images",
        roi_dir=roi_dir,
        skip_bad=skip_bad,
        show_progress=show_progress,
    )
    if not allow_subset:
        _check_totals(result.manifest, root)
    return result


def write_synthetic_breakhis(
    root: Path,
    *,
    patients_per_subtype: int = 1,
    images_per_magnification: int = 2,
    size: tuple[int, int] = (460, 700),
    masks: bool = True,
    seed: int = 0,
) -> Path:
    """Write a BreakHis tree of real PNG files, every subtype and magnification; returns its root.

    Slide ids follow the release's pattern, and the first benign subtype gets a second folder
    with the same numeric core (like 14-22549AB / CD), so grouping by core is exercised. With
    `masks`, each image's RoI mask is written to `root/roi_masks/<image stem>.png`.
    """
    rng = np.random.default_rng(seed)
    base = root / "BreaKHis_v1" / "histology_slides" / "breast"
    for k, (code, subtype) in enumerate(SUBTYPES.items()):
        malignant = k >= 4
        cls = "M" if malignant else "B"
        slides = [f"{10000 + 100 * k + p}" for p in range(patients_per_subtype)]
        if k == 0:
            slides += [f"{slides[0]}AB"]
        for slide in slides:
            folder = base / ("malignant" if malignant else "benign") / "SOB" / subtype / f"SOB_{cls}_{code}_14-{slide}"
            for mag in (40, 100, 200, 400):
                (folder / f"{mag}X").mkdir(parents=True, exist_ok=True)
                for seq in range(1, images_per_magnification + 1):
                    image, mask = blob_image(rng, size[0], size[1], int(malignant), 2)
                    name = f"SOB_{cls}_{code}-14-{slide}-{mag}-{seq:03d}"
                    Image.fromarray(image).save(folder / f"{mag}X" / f"{name}.png")
                    if masks:
                        (root / "roi_masks").mkdir(parents=True, exist_ok=True)
                        Image.fromarray(mask * 255).save(root / "roi_masks" / f"{name}.png")
    return root


def eva_assign(manifest: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Return the 40X images of eva's four subtypes, labelled in eva's order, and which of them lie
    in eva's validation part (their slide id is one of its 14); eva splits by slide folder, so
    folders sharing a numeric core (14-16184 and 14-16184CD) may fall on both sides."""
    keep = (manifest.magnification == 40) & manifest.subtype.isin(EVA_LABELS)
    kept = manifest[keep.to_numpy()].reset_index(drop=True)
    kept = kept.assign(label=kept.subtype.map(EVA_LABELS.index).astype(np.int64), class_name=kept.subtype)
    slide = kept.patient_folder.str.split("-", n=1).str[1]
    return kept, slide.isin(EVA_VAL_SLIDES).to_numpy(dtype=bool)


EVA = NamedProtocol(
    source=EVA_SOURCE,
    description="eva's BreakHis protocol: 40X images of TA, MC, F and DC, 14 slides of them as the test part",
    label="eva",
    fixes={"label": "eva", "magnification": 40},
    counts=EVA_COUNTS,
    assign=eva_assign,
)


# Images per slide folder at 40X in the public release (subtype code -> "slide:count ..."), from a
# public per-folder listing of it; they sum to the published 625 benign and 1,370 malignant images
# and to eva's 1,132 training and 339 validation images, so a tree written from them meets both.
RELEASE_40X = {
    "A": "14-22549AB:29 14-22549CD:35 14-22549G:35 14-29960CD:15",
    "F": "14-14134:36 14-14134E:29 14-21998CD:37 14-21998EF:31 14-23060AB:23 14-23060CD:14 "
    "14-23222AB:17 14-25197:22 14-29960AB:18 14-9133:26",
    "PT": "14-21998AB:58 14-22704:38 14-29315EF:13",
    "TA": "14-13200:15 14-15275:12 14-16184:39 14-16184CD:35 14-19854C:16 14-21978AB:16 14-3411F:16",
    "DC": "14-10926:11 14-11031:14 14-11520:25 14-11951:27 14-12312:32 14-13412:32 14-13993:37 "
    "14-14015:18 14-14926:20 14-14946:31 14-15572:23 14-15696:23 14-15792:14 14-16188:24 14-16336:13 "
    "14-16448:11 14-16601:12 14-16716:38 14-16875:14 14-17614:39 14-17901:26 14-17915:26 14-18650:29 "
    "14-20629:36 14-20636:25 14-2523:10 14-2773:30 14-2980:20 14-2985:20 14-3909:26 14-4364:1 "
    "14-4372:21 14-5287:23 14-5694:22 14-5695:23 14-6241:32 14-8168:10 14-9461:26",
    "LC": "14-12204:20 14-13412:32 14-15570:51 14-15570C:31 14-16196:22",
    "MC": "14-10147:15 14-12773:26 14-13413:29 14-13418DE:15 14-16456:46 14-18842:15 14-18842D:16 "
    "14-19979:26 14-19979C:17",
    "PC": "14-12465:21 14-15687B:17 14-15704:30 14-19440:35 14-9146:23 15-190EF:19",
}


def write_release_40x(root: Path, *, size: int = 8, seed: int = 0) -> Path:
    """Write the release's 40X file list (1,995 PNG files, named and laid out as published) as tiny
    noise images of `size` pixels a side; returns its root. Its 100X-400X images are not written,
    so indexing it needs allow_subset."""
    rng = np.random.default_rng(seed)
    base = root / "BreaKHis_v1" / "histology_slides" / "breast"
    for k, (code, subtype) in enumerate(SUBTYPES.items()):
        cls = "M" if k >= 4 else "B"
        for entry in RELEASE_40X[code].split():
            patient, count = entry.split(":")
            folder = base / BINARY_CLASSES[k >= 4] / "SOB" / subtype / f"SOB_{cls}_{code}_{patient}" / "40X"
            folder.mkdir(parents=True, exist_ok=True)
            for seq in range(1, int(count) + 1):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"SOB_{cls}_{code}-{patient}-40-{seq:03d}.png")
    return root


def _index(spec: DatasetSpec, show_progress: bool) -> IndexResult:
    return index_breakhis(
        spec.root,
        label="binary" if spec.label in (None, "binary") else "subtype",
        group_by=spec.group_by,
        roi_dir=spec.roi_dir,
        allow_subset=spec.allow_subset,
        skip_bad=spec.skip_bad,
        show_progress=show_progress,
    )


def _synthesise(out: Path, seed: int) -> str:
    write_synthetic_breakhis(out, seed=seed)
    return f"synthetic BreakHis tree written to {out}, RoI masks in {out / 'roi_masks'}"


BREAKHIS = register_dataset(
    Dataset(
        name=DATASET,
        layout=LAYOUT,
        protocol=PublishedProtocol(source="BASELINES.md §1.2", counts={"benign_malignant_by_magnification": PUBLISHED}),
        # eva: the class set of protocol eva, which labels its rows (a manifest indexes them by subtype).
        labels={"binary": BINARY_CLASSES, "subtype": SUBTYPE_CLASSES, "eva": EVA_LABELS},
        storage="images",
        # As published: 700x460 (height, width = 460, 700).
        size=(460, 700),
        input_kinds=frozenset({"image", "bag"}),
        index=_index,
        synthesise=_synthesise,
        options=frozenset({"roi_dir", "roi_fallback", "group_by", "magnification", "image_size", "stain"}),
        protocols={"eva": EVA},
    )
)
