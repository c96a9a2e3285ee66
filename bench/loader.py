"""Training images per second: the per-image path (a DataLoader over the patch cache, each image
through albumentations) against the batched path (the fold's patches as one tensor, a batch
index-selected and augmented at once, harness/data/batched.py), per augmentation, batch 128.

CancerNet's settings: 50 px IDC patches resized to 48; `pis` is its Keras ImageDataGenerator
(Keras semantics on both paths), `dihedral` and `none` as the torch pipelines. One CPU thread
for both paths (images/s per core); rounds interleaved, the median epoch time of each side.

Run: .venv/bin/python bench/loader.py          (../shared/data/idc_sample, else a synthetic tree)
     .venv/bin/python bench/loader.py --device cuda   (the batched path on a GPU)
     .venv/bin/python bench/loader.py --smoke  (a tiny synthetic tree, one round: a test runs it)
     ... --figures PATH                         (also every figure at full precision, as JSON)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when not installed
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _figures, also when run by runpy, not as a script

from _figures import Figures, add_figures_option  # noqa: E402

from harness.config import DatasetSpec, TrainParams  # noqa: E402
from harness.data.batched import BatchAugment, DeviceBatches  # noqa: E402
from harness.data.cache import build_patch_cache, open_patch_cache  # noqa: E402
from harness.data.dataset import ImageDataset  # noqa: E402
from harness.data.datasets.idc import write_synthetic_idc  # noqa: E402
from harness.data.manifest import manifest_hash  # noqa: E402
from harness.data.prepare import index_dataset  # noqa: E402
from harness.data.transforms import build_transform  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "idc_sample"
AUGMENTS = {"pis": True, "dihedral": False, "none": False}  # augment -> Keras semantics
BATCH = 128


def _patches(root: Path, folder: Path) -> np.ndarray:
    """Return every patch of the IDC tree at `root` as stored (N x 50 x 50 x 3 uint8)."""
    manifest, _ = index_dataset(DatasetSpec(name="idc", root=root, allow_subset=True))
    return np.asarray(open_patch_cache(build_patch_cache(manifest, manifest_hash(manifest), folder / "cache")))


def _epoch(batches) -> float:
    """Return the seconds one pass over `batches` takes."""
    started = time.perf_counter()
    for batch in batches:
        batch["image"].sum()  # the batch is produced, not just scheduled (a GPU runs asynchronously)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _sides(images: np.ndarray, augment: str, device: str) -> dict[str, object]:
    keras = AUGMENTS[augment]
    params = TrainParams(augment=augment, input_size=48, batch_size=BATCH)
    labels = np.zeros(len(images), dtype=np.int64)
    transform = build_transform(params, stored_hw=(50, 50), train=True, seed=0, keras=keras)
    dataset = ImageDataset(images, np.arange(len(images)), labels, transform)
    per_image = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    batched = DeviceBatches(
        images, labels, BatchAugment(augment, params.input_hw, keras=keras), batch_size=BATCH, device=device, seed=0
    )
    return {"per-image": per_image, "batched": batched}


def main() -> None:
    """Print images/s of both paths per augmentation and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny synthetic tree, one round")
    parser.add_argument("--device", default="cpu", help="where the batched path runs (cpu or cuda)")
    add_figures_option(parser)
    args = parser.parse_args()
    figures = Figures(args.figures)
    torch.set_num_threads(1)
    rounds = 1 if args.smoke else 3
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.smoke or not SHARED.is_dir():
            root, source = write_synthetic_idc(folder / "idc", patients=8, seed=0), "synthetic"
        else:
            root, source = SHARED, str(SHARED)
        images = _patches(root, folder)
    patches, batch = figures.record("patches", value=len(images)), figures.record("batch", value=BATCH)
    figures.record("rounds", value=rounds)
    print(f"{patches} patches of 50x50 from {source}; batch {batch}, resized to 48; batched on {args.device}")
    for augment in AUGMENTS:
        sides = _sides(images, augment, args.device)
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(rounds):
            for name, batches in sides.items():
                times[name].append(_epoch(batches))
        seen = (len(images) // BATCH) * BATCH  # both sides drop the last partial batch
        rates = {name.replace("-", "_"): seen / statistics.median(t) for name, t in times.items()}
        row = figures.record(
            "augments",
            augment,
            value={"images": seen, "seconds": times, **rates, "ratio": rates["batched"] / rates["per_image"]},
        )
        print(
            f"{augment:<12} per-image {row['per_image']:>10,.0f} images/s   batched {row['batched']:>10,.0f} "
            f"images/s   ratio batched/per-image {row['ratio']:.2f}x"
        )
    figures.write()


if __name__ == "__main__":
    main()
