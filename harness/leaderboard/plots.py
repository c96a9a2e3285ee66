"""The leaderboard's figures, as PNG files: ROC curves, accuracy against #params and against compute
(Pareto view), optimisation history per baseline, confusion matrices, and the map galleries the
attention models logged. Each function returns the files it wrote with a caption."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import roc_curve

import baselines
from harness.figures import pyplot
from harness.leaderboard.evidence import probabilities
from harness.leaderboard.runs import BaselineRuns, RunSet

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as PlotFigure

Figure = tuple[Path, str]


def _grid(
    count: int, width: float = 3.6, height: float = 3.3, columns: int = 4
) -> tuple[ModuleType, PlotFigure, list[Axes]]:
    plt = pyplot()
    cols = min(count, columns)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), dpi=100, squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return plt, fig, list(axes.flat[:count])


def _save(plt: ModuleType, fig: PlotFigure, path: Path) -> None:
    """Write a figure at twice its drawn resolution (sharp on a high-density screen; the page draws
    it at its size in inches, 100 px each) and close it."""
    fig.savefig(path, dpi=2 * fig.dpi)
    plt.close(fig)


def params_axis(ax: Axes, values: list[float]) -> None:
    """Label an axis of parameter counts as 3M, 20M: log scale only over more than a decade, where
    only whole decades are labelled, so tick labels never run into each other."""
    pyplot()
    from matplotlib import ticker

    if max(values) > 10 * min(values):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
    ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))


def _test_model(runs: BaselineRuns) -> str:
    return "ensemble" if runs.ensemble is not None else "best_trial"


def _class_names(runset: RunSet, runs: BaselineRuns, classes: int) -> list[str]:
    return runset.class_names(runs) or [str(k) for k in range(classes)]


def roc_figure(runset: RunSet, folder: Path) -> list[Figure]:
    """Plot test ROC curves: one panel for a binary task, one panel per model (a curve per class) otherwise."""
    found = [(r, runset.test_predictions(r, _test_model(r))) for r in runset.baselines]
    frames = [(r, f) for r, f in found if f is not None and f.label.nunique() > 1]
    if not frames:
        return []
    classes = probabilities(frames[0][1]).shape[1]
    path = folder / "roc.png"
    if classes == 2:
        plt = pyplot()
        # 600 x 480 px on the page: the whole plot in one screen.
        fig, ax = plt.subplots(figsize=(6, 4.8), dpi=100)
        for runs, frame in frames:
            fpr, tpr, _ = roc_curve(frame.label, probabilities(frame)[:, 1])
            ax.plot(fpr, tpr, label=runs.label)
        axes = [ax]
    else:
        plt, fig, axes = _grid(len(frames))
        for ax, (runs, frame) in zip(axes, frames):
            probs, names = probabilities(frame), _class_names(runset, runs, classes)
            for k in range(classes):
                if (frame.label == k).any() and (frame.label != k).any():
                    fpr, tpr, _ = roc_curve(frame.label == k, probs[:, k])
                    ax.plot(fpr, tpr, label=names[k])
            ax.set_title(runs.label, fontsize=9)
    for ax in axes:
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(plt, fig, path)
    return [
        (
            path,
            "ROC curves on the test set"
            + ("" if classes == 2 else ", one-vs-rest per class")
            + " (fold ensemble where the winner was retrained, else the best trial)",
        )
    ]


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    frontier, best = [], -math.inf
    for cost, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            frontier.append((cost, accuracy))
            best = accuracy
    return frontier


def pareto_figure(runset: RunSet, folder: Path) -> list[Figure]:
    """Plot test accuracy against #params and against the GPU-hours (or CPU core-hours) each row cost."""
    rows = [r for r in runset.baselines if not math.isnan(r.metric("test_accuracy"))]
    if not rows:
        return []
    gpu = any(r.hours("gpu_share") > 0 for r in rows)
    share, unit = ("gpu_share", "GPU-hours") if gpu else ("cpu_share", "CPU core-hours (no GPU was granted)")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for ax, (xlabel, cost) in zip(
        axes, (("#params (torch)", lambda r: r.param_count("torch")), (unit, lambda r: r.hours(share)))
    ):
        points = [(cost(r), r.metric("test_accuracy"), r.label) for r in rows]
        for x, y, label in points:
            ax.scatter(x, y, s=30)
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        frontier = _frontier([(x, y) for x, y, _ in points])
        ax.step(
            [p[0] for p in frontier],
            [p[1] for p in frontier],
            where="post",
            color="black",
            lw=0.8,
            label="Pareto front",
        )
        if xlabel.startswith("#params"):
            params_axis(ax, [x for x, _, _ in points])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (best trial)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = folder / "pareto.png"
    _save(plt, fig, path)
    return [
        (
            path,
            f"Test accuracy of each baseline's best trial against its size and against the {unit} of its "
            "trials and fold runs; the line joins the rows nothing beats on both",
        )
    ]


def history_figure(runset: RunSet, folder: Path) -> list[Figure]:
    """Plot each baseline's objective per trial, in the order trials started, with the best so far
    (not the floors: a floor is fitted once, a history of one point)."""
    rows = [r for r in runset.baselines if "objective" in r.trials and not r.floor]
    if not rows:
        return []
    plt, fig, axes = _grid(len(rows), 3.4, 2.9)
    for ax, runs in zip(axes, rows):
        trials = runs.trials.sort_values("start_time")
        values = trials.objective.to_numpy(dtype=float)
        minimise = trials.objective_metric.iloc[0] == "val_loss"
        order = np.arange(1, len(values) + 1)
        ax.scatter(order, values, s=14, label="trial")
        running = (
            np.fmin.accumulate(np.where(np.isnan(values), np.inf, values))
            if minimise
            else np.fmax.accumulate(np.where(np.isnan(values), -np.inf, values))
        )
        ax.step(order, running, where="post", color="C3", label="best so far")
        ax.set_title(runs.label, fontsize=9)
        ax.set_xlabel("trial (start order)")
        ax.set_ylabel(trials.objective_metric.iloc[0])
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = folder / "history.png"
    _save(plt, fig, path)
    return [
        (
            path,
            "Optimisation history: each trial's objective (its best validation epoch) in start order, and "
            "the best so far; trials stopped early by ASHA show the objective they had reached",
        )
    ]


# Cell text of a confusion matrix: legible at the page's 100 px per inch, white on dark cells.
CONFUSION_FONT = 11
DARK_CELL = 0.5


def confusion_panel(ax: Axes, matrix: np.ndarray, names: list[str], title: str) -> None:
    """Draw one row-normalised confusion matrix (counts in brackets) with text that contrasts with its cell."""
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(normalised):
        colour = "white" if value > DARK_CELL else "black"
        text = f"{value:.2f}\n({int(matrix[i, j])})"
        ax.text(j, i, text, ha="center", va="center", fontsize=CONFUSION_FONT, color=colour)
    ax.set_xticks(range(len(names)), names, fontsize=9, rotation=30)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)


def confusion_figure(runset: RunSet, folder: Path) -> list[Figure]:
    """Plot each model's row-normalised test confusion matrix, three to a row."""
    found = [(r, runset.test_predictions(r, _test_model(r))) for r in runset.baselines]
    frames = [(r, f) for r, f in found if f is not None]
    if not frames:
        return []
    plt, fig, axes = _grid(len(frames), 3.8, 3.6, columns=3)
    for ax, (runs, frame) in zip(axes, frames):
        classes = probabilities(frame).shape[1]
        matrix = np.zeros((classes, classes))
        np.add.at(matrix, (frame.label.to_numpy(), frame.pred.to_numpy()), 1)
        confusion_panel(ax, matrix, _class_names(runset, runs, classes), runs.label)
    fig.tight_layout()
    path = folder / "confusion.png"
    _save(plt, fig, path)
    return [(path, "Test confusion matrices, rows normalised (counts in brackets)")]


def map_galleries(runset: RunSet, folder: Path) -> list[Figure]:
    """Copy the RoI/attention map galleries the attention models' best trials logged."""
    figures = []
    for runs in runset.baselines:
        known = runs.baseline in baselines.list_baselines()
        if runs.best is None or not known or not baselines.info(runs.baseline).has_own_maps:
            continue
        for which in ("best", "worst"):
            local = runset.artifact(runs.best.run_id, f"test/maps_{which}.png")
            if local is not None:
                path = folder / f"maps_{runs.label.replace(' ', '_').replace('(', '').replace(')', '')}_{which}.png"
                shutil.copyfile(local, path)
                figures.append((path, f"{runs.label}: maps of its {which} test predictions (best trial)"))
    return figures


def all_figures(runset: RunSet, folder: Path) -> list[Figure]:
    """Write every figure into `folder`; returns (file, caption) pairs in page order."""
    folder.mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []
    for plot in (roc_figure, pareto_figure, history_figure, confusion_figure, map_galleries):
        figures += plot(runset, folder)
    return figures
