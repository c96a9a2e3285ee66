"""Samples per second: decoding the original files each epoch, as a torchvision ImageFolder does,
against the harness's packed caches, for IDC patches and BreakHis images.

Run: .venv/bin/python bench/data.py   (reads ../shared/data samples, else writes synthetic trees)

Both sides yield the same float tensors in [0, 1] for the same images in the same order, with no
augmentation: IDC 50x50 patches (edge patches padded), BreakHis at its working resolution
460x700. The ImageFolder side uses torchvision's own loader (PIL decode + RGB) and ToTensor. The cache
side is measured twice: the loader alone (uint8 batches, what a data-loader worker hands a GPU,
which normalises on the device) and with the per-batch float normalisation done on this CPU, as
a CPU-only run does. Rounds are interleaved; each ratio is the median time per epoch of
ImageFolder over that of the cache side.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import default_loader
from torchvision.transforms import functional as TF

from harness.config import DatasetSpec, TrainParams
from harness.data.cache import build_image_cache, build_patch_cache, image_cache_key, open_patch_cache
from harness.data.dataset import ImageDataset
from harness.data.manifest import manifest_hash
from harness.data.prepare import index_dataset
from harness.data.synthetic import write_synthetic_breakhis, write_synthetic_idc
from harness.data.transforms import batch_normaliser, build_transform

ROUNDS = 3
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def image_folder_epoch(paths: list[str], size: tuple[int, int]) -> torch.Tensor:
    """Decode every file as ImageFolder's loader does, pad or resize to `size`, return the last tensor."""
    for path in paths:
        image = TF.to_tensor(default_loader(path))
        if image.shape[1:] != size:
            image = TF.pad(image, [0, 0, size[1] - image.shape[2], size[0] - image.shape[1]], padding_mode="edge") \
                if image.shape[1] <= size[0] and image.shape[2] <= size[1] else TF.resize(image, list(size), antialias=True)
    return image


def cache_epoch(dataset: ImageDataset, *, normalise: bool, batch: int = 256) -> torch.Tensor:
    """Read every item of the harness dataset once in batches (normalised on the CPU if asked)."""
    to_float = batch_normaliser("unit", "cpu")
    for start in range(0, len(dataset), batch):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch, len(dataset)))])
        if normalise:
            images = to_float(images)
    return images


def compare(name: str, spec: DatasetSpec, work: Path) -> None:
    manifest, _ = index_dataset(spec)
    digest = manifest_hash(manifest)
    if spec.name == "idc":
        size = (50, 50)
        cache = build_patch_cache(manifest, digest, work / "cache")
    else:
        size = (460, 700)
        cache, _ = build_image_cache(manifest, image_cache_key(digest, size, "none", None, "none"), work / "cache", size=size)
    params = TrainParams(input_size=size, normalisation="unit", augment="none")
    dataset = ImageDataset(open_patch_cache(cache), np.arange(len(manifest)), manifest.label.to_numpy(),
                           build_transform(params, stored_hw=size, train=False))
    paths = list(manifest.path)
    times: dict[str, list[float]] = {"folder": [], "loader": [], "cpu": []}
    for _ in range(ROUNDS):
        for side, run in (("folder", lambda: image_folder_epoch(paths, size)),
                          ("loader", lambda: cache_epoch(dataset, normalise=False)),
                          ("cpu", lambda: cache_epoch(dataset, normalise=True))):
            start = time.perf_counter()
            run()
            times[side].append(time.perf_counter() - start)
    f, loader, cpu = (statistics.median(times[k]) for k in ("folder", "loader", "cpu"))
    n = len(paths)
    print(f"{name:<10}{n:>7}{n / f:>14,.0f}{n / loader:>14,.0f}{f / loader:>8.1f}x{n / cpu:>16,.0f}{f / cpu:>8.1f}x")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    idc_root = SHARED / "idc_sample"
    bkh_root = SHARED / "breakhis_sample"
    # Any argument (e.g. --synthetic) measures on generated trees even where the samples exist.
    if len(sys.argv) > 1 or not idc_root.is_dir():
        idc_root = write_synthetic_idc(work / "idc", patients=40)
    if len(sys.argv) > 1 or not bkh_root.is_dir():
        bkh_root = write_synthetic_breakhis(work / "breakhis")
    print(f"{'dataset':<10}{'images':>7}{'ImageFolder/s':>14}{'cache uint8/s':>14}{'ratio':>9}  "
          f"{'cache+CPU norm/s':>16}{'ratio':>9}")
    compare("IDC", DatasetSpec(name="idc", root=idc_root, allow_subset=True), work / "idc_work")
    compare("BreakHis", DatasetSpec(name="breakhis", root=bkh_root, allow_subset=True), work / "bkh_work")


if __name__ == "__main__":
    main()
