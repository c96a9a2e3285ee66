"""One place for matplotlib: the headless pyplot every figure is drawn with, and the figures a run
logs beside its predictions (confusion matrix, explanation-map gallery)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from harness.evaluation import MapGallery


def pyplot():
    """Return matplotlib.pyplot on the Agg backend (trials and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gallery_png(gallery: MapGallery, path: Path, *, title: str) -> None:
    """Write `gallery` as one row of images with their maps overlaid."""
    plt = pyplot()
    count = len(gallery.images)
    fig, axes = plt.subplots(1, count, figsize=(2.4 * count, 2.9), dpi=110, squeeze=False)
    for ax, image, heat, caption in zip(axes[0], gallery.images, gallery.maps, gallery.captions):
        height, width = image.shape[:2]
        ax.imshow(image)
        # The map covers the whole image whatever its resolution; bilinear display, as BASELINES §4.3 scores it.
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1, extent=(0, width, height, 0), interpolation="bilinear")
        ax.set_title(caption, fontsize=6)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def confusion_png(matrix: np.ndarray, class_names: tuple[str, ...], path: Path, *, title: str) -> None:
    """Write a confusion matrix (rows true, columns predicted) with its counts."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
