"""Samples per second: decoding the original files each epoch, as a torchvision ImageFolder does,
against the harness's packed caches, for IDC patches and BreakHis images; and what the content
digest adds to indexing.

Run: .venv/bin/python bench/data.py   (reads ../shared/data samples, else writes synthetic trees)
     .venv/bin/python bench/data.py --synthetic   (generated trees even where the samples exist)
     .venv/bin/python bench/data.py --smoke       (tiny generated trees, one round: a test runs it)
     ... --figures PATH                           (also every figure at full precision, as JSON)

Both sides yield the same float tensors in [0, 1] for the same images in the same order, with no
augmentation: IDC 50x50 patches (edge patches padded), BreakHis at its working resolution
460x700. The ImageFolder side uses torchvision's own loader (PIL decode + RGB) and ToTensor. The cache
side is measured twice: the loader alone (uint8 batches, what a data-loader worker hands a GPU,
which normalises on the device) and with the per-batch float normalisation done on this CPU, as
a CPU-only run does. Rounds are interleaved; each ratio is the median time per epoch of
ImageFolder over that of the cache side.

Indexing reads each file once, digests its bytes (BLAKE2b) and decodes the image from the same
bytes. The index rows set that per-file work against decoding from the path alone (what indexing
did before digests), in interleaved rounds, and give the whole indexer's rate beside them. They
are CPU times (every side is single-threaded), which other processes on a shared machine disturb
less than wall time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _figures import Figures, add_figures_option
from PIL import Image
from torchvision.datasets.folder import default_loader
from torchvision.transforms import functional as TF

from harness.config import DatasetSpec, TrainParams
from harness.data.cache import build_image_cache, build_patch_cache, image_cache_key, open_patch_cache
from harness.data.dataset import ImageDataset
from harness.data.datasets.breakhis import write_synthetic_breakhis
from harness.data.datasets.idc import write_synthetic_idc
from harness.data.manifest import manifest_hash
from harness.data.normalise import batch_normaliser
from harness.data.prepare import index_dataset
from harness.data.records import decode
from harness.data.transforms import build_transform

ROUNDS = 3
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def image_folder_epoch(paths: list[str], size: tuple[int, int]) -> torch.Tensor:
    """Decode every file as ImageFolder's loader does, pad or resize to `size`, return the last tensor."""
    for path in paths:
        image = TF.to_tensor(default_loader(path))
        if image.shape[1:] != size:
            image = (
                TF.pad(image, [0, 0, size[1] - image.shape[2], size[0] - image.shape[1]], padding_mode="edge")
                if image.shape[1] <= size[0] and image.shape[2] <= size[1]
                else TF.resize(image, list(size), antialias=True)
            )
    return image


def cache_epoch(dataset: ImageDataset, *, normalise: bool, batch: int = 256) -> torch.Tensor:
    """Read every item of the harness dataset once in batches (normalised on the CPU if asked)."""
    to_float = batch_normaliser("unit", "cpu")
    for start in range(0, len(dataset), batch):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch, len(dataset)))])
        if normalise:
            images = to_float(images)
    return images


def _per_second(count: int, seconds: dict[str, float]) -> dict[str, float]:
    """Return `count` items over each side's seconds: the sides' rates."""
    return {side: count / s for side, s in seconds.items()}


def compare(name: str, spec: DatasetSpec, work: Path, rounds: int, figures: Figures) -> None:
    """Print (and record) the samples/s of one epoch decoded as ImageFolder does and read from the
    cache, alone and normalised on the CPU, and the ratios of their median times."""
    manifest, _ = index_dataset(spec)
    digest = manifest_hash(manifest)
    if spec.name == "idc":
        size = (50, 50)
        cache = build_patch_cache(manifest, digest, work / "cache")
    else:
        size = (460, 700)
        cache, _ = build_image_cache(
            manifest, image_cache_key(digest, size, "none", None, "none"), work / "cache", size=size
        )
    params = TrainParams(input_size=size, normalisation="unit", augment="none")
    dataset = ImageDataset(
        open_patch_cache(cache),
        np.arange(len(manifest)),
        manifest.label.to_numpy(),
        build_transform(params, stored_hw=size, train=False),
    )
    paths = list(manifest.path)
    medians = interleaved_medians(
        [
            lambda: image_folder_epoch(paths, size),
            lambda: cache_epoch(dataset, normalise=False),
            lambda: cache_epoch(dataset, normalise=True),
        ],
        rounds,
        time.perf_counter,
    )
    seconds = dict(zip(("image_folder", "cache_uint8", "cache_cpu_norm"), medians))
    row = figures.record(
        "loading",
        name,
        value={
            "images": len(paths),
            "seconds": seconds,
            "per_s": _per_second(len(paths), seconds),
            "ratio_uint8": seconds["image_folder"] / seconds["cache_uint8"],
            "ratio_cpu_norm": seconds["image_folder"] / seconds["cache_cpu_norm"],
        },
    )
    rate = row["per_s"]
    print(
        f"{name:<10}{row['images']:>7}{rate['image_folder']:>14,.0f}{rate['cache_uint8']:>14,.0f}"
        f"{row['ratio_uint8']:>8.1f}x{rate['cache_cpu_norm']:>16,.0f}{row['ratio_cpu_norm']:>8.1f}x"
    )


def interleaved_medians(sides: list[Callable[[], object]], rounds: int, clock: Callable[[], float]) -> list[float]:
    """Return each side's median time by `clock` over `rounds` rounds, the sides interleaved in each
    round so that a change in the machine's load falls on all of them alike."""
    times: list[list[float]] = [[] for _ in sides]
    for _ in range(rounds):
        for side, run in zip(times, sides):
            start = clock()
            run()
            side.append(clock() - start)
    return [statistics.median(side) for side in times]


def decode_from_path(paths: list[Path]) -> None:
    """Decode every file from its path, as indexing did before it digested the bytes."""
    for path in paths:
        with Image.open(path) as im:
            im.load()


def index_cost(name: str, spec: DatasetSpec, rounds: int, figures: Figures) -> None:
    """Print (and record) the files/s of decoding alone, of the indexer's read-digest-decode, their
    ratio, and the whole indexer's files/s, each the median CPU time of interleaved rounds."""
    paths = [Path(p) for p in index_dataset(spec)[0].path]  # also warms the page cache
    medians = interleaved_medians(
        [lambda: decode_from_path(paths), lambda: [decode(p) for p in paths], lambda: index_dataset(spec)],
        rounds,
        time.process_time,
    )
    seconds = dict(zip(("decode_only", "read_digest_decode", "indexer"), medians))
    row = figures.record(
        "indexing",
        name,
        value={
            "files": len(paths),
            "cpu_seconds": seconds,
            "per_s": _per_second(len(paths), seconds),
            "ratio": seconds["read_digest_decode"] / seconds["decode_only"],
        },
    )
    rate = row["per_s"]
    print(
        f"{name:<10}{row['files']:>7}{rate['decode_only']:>14,.0f}{rate['read_digest_decode']:>18,.0f}"
        f"{row['ratio']:>7.2f}x{rate['indexer']:>14,.0f}"
    )


def measure(work: Path, smoke: bool, synthetic: bool, rounds: int, figures: Figures) -> None:
    """Print both tables for the shared samples, or for trees generated under `work`."""
    idc_root = SHARED / "idc_sample"
    bkh_root = SHARED / "breakhis_sample"
    if smoke or synthetic or not idc_root.is_dir():
        idc_root = write_synthetic_idc(work / "idc", patients=4 if smoke else 40)
    if smoke or synthetic or not bkh_root.is_dir():
        small = dict(images_per_magnification=1, size=(46, 70), masks=False) if smoke else {}
        bkh_root = write_synthetic_breakhis(work / "breakhis", **small)
    idc = DatasetSpec(name="idc", root=idc_root, allow_subset=True)
    bkh = DatasetSpec(name="breakhis", root=bkh_root, allow_subset=True)
    print(
        f"{'dataset':<10}{'images':>7}{'ImageFolder/s':>14}{'cache uint8/s':>14}{'ratio':>9}  "
        f"{'cache+CPU norm/s':>16}{'ratio':>9}"
    )
    compare("IDC", idc, work / "idc_work", rounds, figures)
    compare("BreakHis", bkh, work / "bkh_work", rounds, figures)
    print(f"\n{'index':<10}{'files':>7}{'decode only/s':>14}{'read+digest+dec/s':>18}{'ratio':>8}{'indexer/s':>14}")
    index_cost("IDC", idc, rounds, figures)
    index_cost("BreakHis", bkh, rounds, figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--synthetic", action="store_true", help="measure on generated trees even where the samples exist"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny generated trees and one round (for the tests)")
    add_figures_option(parser)
    args = parser.parse_args()
    figures = Figures(args.figures)
    rounds = figures.record("rounds", value=1 if args.smoke else ROUNDS)
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        measure(Path(tmp), args.smoke, args.synthetic, rounds, figures)
    figures.write()


if __name__ == "__main__":
    main()
