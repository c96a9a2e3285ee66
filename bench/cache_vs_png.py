"""How much an epoch of IDC patches costs from the packed cache against decoding the PNG files.

Run: .venv/bin/python bench/cache_vs_png.py [IDC_ROOT] [--smoke]   (default ../shared/data/idc_sample,
else a synthetic tree; --smoke: a 4-patient synthetic tree and one round, for the tests). Both
sides read the same patches in the same shuffled order, as uint8
arrays ready for augmentation, several rounds interleaved; the ratio is the median time of one
pass from PNG over the median from the cache. --figures PATH also writes every figure at full
precision as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _figures import Figures, add_figures_option

from harness.data.cache import build_patch_cache, load_padded, open_patch_cache
from harness.data.datasets.idc import PATCH_SIZE, index_idc, write_synthetic_idc
from harness.data.manifest import manifest_hash

ROUNDS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "root",
        nargs="?",
        type=Path,
        default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "idc_sample",
    )
    parser.add_argument("--smoke", action="store_true", help="a 4-patient synthetic tree and one round (for the tests)")
    add_figures_option(parser)
    args = parser.parse_args()
    figures = Figures(args.figures)
    rounds = 1 if args.smoke else ROUNDS
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    root = args.root
    if args.smoke or not root.is_dir():
        root = write_synthetic_idc(work / "synthetic", patients=4 if args.smoke else 40)
    manifest = index_idc(root, allow_subset=True).manifest
    cache = open_patch_cache(build_patch_cache(manifest, manifest_hash(manifest), work / "cache"))
    order = np.random.default_rng(0).permutation(len(manifest))
    paths = manifest.path.to_numpy()
    png, packed = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        checksum_png = sum(int(load_padded(paths[i], PATCH_SIZE)[0][0, 0, 0]) for i in order)
        png.append(time.perf_counter() - start)
        start = time.perf_counter()
        checksum_cache = sum(int(np.asarray(cache[i])[0, 0, 0]) for i in order)
        packed.append(time.perf_counter() - start)
        assert checksum_png == checksum_cache
    n = figures.record("patches", value=len(manifest))
    figures.record("rounds", value=rounds)
    sides = {}
    for side, times in (("png", png), ("cache", packed)):
        seconds = statistics.median(times)
        sides[side] = figures.record(side, value={"seconds": times, "median_s": seconds, "patches_per_s": n / seconds})
    ratio = figures.record("ratio", value=sides["png"]["median_s"] / sides["cache"]["median_s"])
    png_side, cache_side = sides["png"], sides["cache"]
    print(f"{n:,} patches from {root}")
    print(f"PNG decode  {png_side['median_s'] * 1e3:8.1f} ms/epoch   ({png_side['patches_per_s']:,.0f} patches/s)")
    print(f"uint8 cache {cache_side['median_s'] * 1e3:8.1f} ms/epoch   ({cache_side['patches_per_s']:,.0f} patches/s)")
    print(f"ratio PNG/cache = {ratio:.1f}x (median of {rounds} interleaved rounds)")
    figures.write()


if __name__ == "__main__":
    main()
