"""The README's foundation-model blocks: the encoder presets as the registry holds them, and the
probe bench's figures as `bench/probe_sweep.py --figures` saved them (docs/figures/probe-sweep.json),
so the text says what the code holds and printed, and a test checks it still does.

usage: python tools/probe_readme.py           (rewrite both blocks in README.md)
       python tools/probe_readme.py --check   (exit 1 when README.md's blocks differ)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures" / "probe-sweep.json"
PRESETS = ("<!-- encoder-presets: tools/probe_readme.py writes this block -->", "<!-- /encoder-presets -->")
BENCH = ("<!-- probe-figures: tools/probe_readme.py writes this block -->", "<!-- /probe-figures -->")


def _word(value: Any) -> str:
    """Return a constructor argument as its source would write it (a class or a partial by name)."""
    if isinstance(value, functools.partial):
        options = ", ".join(f"{k}={_word(v)}" for k, v in value.keywords.items())
        return f"{_word(value.func)}({options})"
    return value.__name__ if isinstance(value, type) else repr(value)


def render_presets() -> str:
    """Return the README's table of encoder presets, from the registry."""
    import baselines

    rows = [
        PRESETS[0],
        "| name | timm architecture | constructor arguments | key names of the file | embedding (width) | mean / std |",
        "|---|---|---|---|---|---|",
    ]
    for name in baselines.list_encoders():
        p = baselines.encoder_preset(name)
        kwargs = ", ".join(f"`{k}={_word(v)}`" for k, v in p.kwargs.items())
        stats = "ImageNet" if p.mean == (0.485, 0.456, 0.406) else f"{p.mean} / {p.std}"
        rows.append(
            f"| `{name}` | `{p.arch}` | {kwargs} | {p.layout} | {p.embedding} ({baselines.encoder_dim(name):,}) "
            f"| {stats} |"
        )
    return "\n".join([*rows, PRESETS[1]])


def render_figures(figures: dict[str, Any]) -> str:
    """Return the README's lines of the probe bench's figures."""
    ex, one, sweep = figures["extraction"], figures["one_fit"], figures["sweep"]
    arch = ", ".join(f"{k} {v}" for k, v in figures["arch"].items())
    return "\n".join(
        [
            BENCH[0],
            f"`bench/probe_sweep.py` on {figures['data']} ({ex['rows']:,} images), a random-initialised "
            f"`{figures['encoder']}`-family encoder ({arch}) on {figures['device']}: embedding every image once "
            f"took {ex['seconds']:.1f} s ({ex['per_s']:,.1f} embeddings/s); one `linear_probe` fit of "
            f"{one['epochs']} epochs on the {one['rows']:,} cached training and validation embeddings took "
            f"{one['seconds']:.2f} s, where embedding those images every epoch would take {one['pixels_s']:.1f} s "
            f"({one['ratio']:.0f}x); a sweep of {sweep['trials']} head trials (TPE, ASHA, an MLflow run each, "
            f"{figures['concurrent']} at a time) ran at {sweep['per_min']:.1f} trials/min from the first trial's "
            f"start to the last one's end ({sweep['wall_s']:.0f} s for the whole sweep: "
            f"{sweep['wall_per_min']:.1f} trials/min). Figures: `docs/figures/probe-sweep.json`.",
            BENCH[1],
        ]
    )


def _replace(text: str, markers: tuple[str, str], block: str) -> str:
    start, end = text.index(markers[0]), text.index(markers[1]) + len(markers[1])
    return text[:start] + block + text[end:]


def main() -> None:
    """Rewrite (or with --check, compare) README.md's two blocks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md's blocks differ")
    args = parser.parse_args()
    readme = REPO / "README.md"
    text = readme.read_text()
    new = _replace(text, PRESETS, render_presets())
    new = _replace(new, BENCH, render_figures(json.loads(FIGURES.read_text())))
    if args.check:
        sys.exit(0 if new == text else 1)
    readme.write_text(new)


if __name__ == "__main__":
    main()
