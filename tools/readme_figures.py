"""The README's GPU figures, written from the JSON files the benches saved on a GPU machine
(docs/figures/, `bench/gpu.py --figures` and `bench/loader.py --device cuda --figures`), so the
text says what the benches printed and a test checks it still does.

usage: python tools/readme_figures.py           (rewrite the block in README.md)
       python tools/readme_figures.py --check   (exit 1 when README.md's block differs)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"
BEGIN, END = "<!-- gpu-figures: tools/readme_figures.py writes this block -->", "<!-- /gpu-figures -->"


def _single(gpu: dict) -> list[str]:
    rows = ["| baseline | input, batch | fp32 img/s | bf16 img/s | bf16/fp32 |", "|---|---|---:|---:|---:|"]
    for name, row in gpu["single"].items():
        rows.append(
            f"| {name} | {row['input']}, {row['batch']} | {row['fp32']['rate']:,.0f} | {row['bf16']['rate']:,.0f} "
            f"| {row['bf16_over_fp32']:.2f} |"
        )
    return rows


def _packed(gpu: dict) -> list[str]:
    rows = ["| baseline | trials on the GPU | total img/s | vs one alone | GPU busy |", "|---|---:|---:|---:|---:|"]
    for name, sizes in gpu["packed"].items():
        for n, row in sizes.items():
            rows.append(f"| {name} | {n} | {row['total']:,.0f} | {row['vs_one_alone']:.2f}x | {row['gpu_util']} |")
    return rows


def render(gpu: dict, loader: dict) -> str:
    """Return the README's block of GPU figures from the two benches' saved figures."""
    reads = ", ".join(f"{name} {row['ratio']:.2f}x" for name, row in gpu["loss_reads"].items())
    batched = ", ".join(f"`{name}` {row['ratio']:.1f}x" for name, row in loader["augments"].items())
    lines = [
        BEGIN,
        f"On one {gpu['device']} (torch {gpu['torch']}, bf16 autocast, channels-last, {gpu['seconds']:g} s per "
        "measurement; `bench/gpu.py`, figures in `docs/figures/gpu-nvidia-h200.json`), one trial alone:",
        "",
        *_single(gpu),
        "",
        f"Reading the loss every {gpu['read_every']} steps instead of every step: {reads}. Trials packed on the "
        "one GPU as concurrent processes (what fractional `gpu:` shares amount to), bf16:",
        "",
        *_packed(gpu),
        "",
        f"`bench/loader.py --device cuda` ({loader['patches']:,} IDC sample patches, batch {loader['batch']}), "
        f"the batched path on the GPU against the per-image path on one CPU core: {batched}.",
        END,
    ]
    return "\n".join(lines)


def _current() -> str:
    gpu = json.loads((FIGURES / "gpu-nvidia-h200.json").read_text())
    loader = json.loads((FIGURES / "loader-nvidia-h200.json").read_text())
    return render(gpu, loader)


def main() -> None:
    """Rewrite README.md's block of GPU figures, or with --check exit 1 when it differs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md's block is not what it would write")
    args = parser.parse_args()
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    wanted = _current()
    if args.check:
        sys.exit(0 if text[start:end] == wanted else 1)
    readme.write_text(text[:start] + wanted + text[end:])


if __name__ == "__main__":
    main()
