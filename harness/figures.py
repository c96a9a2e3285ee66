"""One place for figures: the headless pyplot the leaderboard and the studies draw with, and the
figures every run logs beside its predictions (confusion matrix, explanation-map gallery).

A run's figures are drawn with Pillow, not matplotlib: every finished trial logs them, and
matplotlib's import and figure set-up cost a trial several times what Pillow takes to draw them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from harness.evaluation import MapGallery

# matplotlib's `jet` colormap as its segment anchors (position, value) per channel.
_JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
# matplotlib's `Blues` at its two ends, for the confusion matrix's cells.
_BLUES_LOW, _BLUES_HIGH = np.array([247, 251, 255]), np.array([8, 48, 107])
PANEL = 240  # px of the longer side of each gallery image
MAP_ALPHA = 0.4


def pyplot():
    """Return matplotlib.pyplot on the Agg backend (trials and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def jet(values: np.ndarray) -> np.ndarray:
    """Return matplotlib's `jet` colours (uint8 RGB, shape + (3,)) of `values` in [0, 1]."""
    clipped = np.clip(values, 0.0, 1.0)
    channels = []
    for c in ("red", "green", "blue"):
        positions, levels = zip(*_JET[c])
        channels.append(np.interp(clipped, positions, levels))
    return (np.stack(channels, -1) * 255).round().astype(np.uint8)


def _panel(image: np.ndarray, heat: np.ndarray) -> Image.Image:
    """Return one image scaled to the panel size with its map overlaid (bilinear over the whole image)."""
    height, width = image.shape[:2]
    scale = PANEL / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    base = Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("RGB").resize(size, Image.Resampling.NEAREST)
    spread = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    overlay = Image.fromarray(jet(np.asarray(spread)))
    return Image.blend(base, overlay, MAP_ALPHA)


def gallery_png(gallery: MapGallery, path: Path, *, title: str) -> None:
    """Write `gallery` as one row of images with their maps overlaid and a caption under each."""
    panels = [_panel(image, heat) for image, heat in zip(gallery.images, gallery.maps)]
    gap, top, caption_height = 12, 34, 44
    width = sum(p.width for p in panels) + gap * (len(panels) + 1)
    height = top + max(p.height for p in panels) + caption_height + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, top / 2), title, fill="black", font=_font(15), anchor="mm")
    x = gap
    for panel, caption in zip(panels, gallery.captions):
        canvas.paste(panel, (x, top))
        draw.multiline_text(
            (x + panel.width / 2, top + panel.height + 6),
            caption,
            fill="black",
            font=_font(12),
            anchor="ma",
            align="center",
        )
        x += panel.width + gap
    canvas.save(path)


def _cell_colour(fraction: float) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in np.round(_BLUES_LOW + (_BLUES_HIGH - _BLUES_LOW) * fraction))
    return red, green, blue


def confusion_png(matrix: np.ndarray, class_names: tuple[str, ...], path: Path, *, title: str) -> None:
    """Write a confusion matrix (rows true, columns predicted) with its counts, cells shaded by count."""
    cell, left, top = 84, 124, 64
    n = len(class_names)
    canvas = Image.new("RGB", (left + cell * n + 20, top + cell * n + 56), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((canvas.width / 2, 16), title, fill="black", font=_font(15), anchor="mm")
    peak = max(int(matrix.max()), 1)
    for (i, j), count in np.ndenumerate(matrix):
        x, y = left + j * cell, top + i * cell
        fraction = count / peak
        draw.rectangle((x, y, x + cell, y + cell), fill=_cell_colour(fraction), outline="white")
        ink = "white" if fraction > 0.5 else "black"
        draw.text((x + cell / 2, y + cell / 2), str(int(count)), fill=ink, font=_font(18), anchor="mm")
    for k, name in enumerate(class_names):
        draw.text((left + k * cell + cell / 2, top - 8), str(name), fill="black", font=_font(13), anchor="md")
        draw.text((left - 8, top + k * cell + cell / 2), str(name), fill="black", font=_font(13), anchor="rm")
    draw.text((left + cell * n / 2, top + cell * n + 28), "predicted", fill="black", font=_font(14), anchor="mm")
    draw.text((10, top + cell * n / 2), "true", fill="black", font=_font(14), anchor="lm")
    canvas.save(path)
