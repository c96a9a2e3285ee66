"""Bytes and seconds a sweep trial spends on checkpoints per epoch: the layout before (the model,
the optimiser and a separate copy of the best epoch's weights, every epoch) against the current one
(the best weights stored once when the best epoch is the current one), at checkpoint_every 1 and 2.

ResNet-18 with Adam on synthetic IDC patches at 50 px; every epoch's TrainState is taken from a real
`fit` and written as a trial writes it (as plain data, harness.sweep._checkpoint) to a scratch
folder, both layouts in the same epoch, so the ratio compares the same states. Seconds include
building the state (copying the weights and the optimiser) and the write.

Run: .venv/bin/python bench/checkpoint.py            (8 epochs)
     .venv/bin/python bench/checkpoint.py --smoke    (2 epochs: a test runs it)
     ... --figures PATH                              (also every figure at full precision, as JSON)
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import yaml
from _figures import Figures, add_figures_option

from harness.config import load_experiment
from harness.data.datasets.idc import write_synthetic_idc
from harness.data.prepare import load_or_index, prepare
from harness.run_spec import RunSpec
from harness.sweep._checkpoint import TrialCheckpoint, save_checkpoint
from harness.train import EpochReport, TrainState, fit


def _before(state: TrainState) -> TrainState:
    """Return `state` in the layout every checkpoint had before: the best weights always their own copy."""
    if state.best.state:
        return state
    best = dataclasses.replace(state.best, state={k: v.clone() for k, v in state.model.items()})
    return dataclasses.replace(state, model={k: v.clone() for k, v in state.model.items()}, best=best)


def _write(build, folder: Path) -> tuple[int, float]:
    """Return bytes and seconds of building a state and saving it as a trial does."""
    started = time.perf_counter()
    size = save_checkpoint(folder, TrialCheckpoint("run", build(), {}))
    return size, time.perf_counter() - started


def _spec(folder: Path, epochs: int) -> RunSpec:
    """Return ResNet-18's recipe from scratch (every layer trained), Adam lr 1e-3, batch 32, on a
    12-patient synthetic IDC tree, as an experiment file describes it."""
    root = write_synthetic_idc(folder / "idc", patients=12, seed=0)
    experiment = {
        "name": "checkpoint",
        "dataset": {"name": "idc", "root": str(root), "allow_subset": True},
        "protocol": {"folds": 3, "test_fraction": 0.2},
        "baselines": [
            {"name": "resnet18", "fixed": {"freeze": "none", "lr": 1e-3, "batch_size": 32, "epochs_max": epochs}}
        ],
        "search": {"max_epochs": epochs, "grace_period": 1},
        "resources": {"cpu": 2},
        "training": {"patience": epochs},
        "output_dir": str(folder / "results"),
    }
    path = folder / "checkpoint.yaml"
    path.write_text(yaml.safe_dump(experiment))
    config = load_experiment(path)
    manifest, _ = load_or_index(config.dataset)
    data = prepare(manifest, config.dataset, config.protocol, folder / "work")
    return RunSpec.build(config, data, "resnet18", fold=0)


def main() -> None:
    """Print each epoch's checkpoint bytes and seconds in both layouts, then the per-epoch means."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2 epochs (a test runs it)")
    add_figures_option(parser)
    args = parser.parse_args()
    figures = Figures(args.figures)
    epochs = figures.record("epochs", value=2 if args.smoke else 8)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)

        def measure(entry: EpochReport) -> None:
            before = _write(lambda: _before(entry.snapshot()), folder)
            after = _write(entry.snapshot, folder)
            rows.append(
                {
                    "epoch": entry.epoch,
                    "best_epoch": entry.best_epoch,
                    **dict(zip(("before_bytes", "before_s"), before)),
                    **dict(zip(("after_bytes", "after_s"), after)),
                }
            )

        fit(_spec(folder, epochs), measure)
    figures.record("epoch_rows", value=rows)
    print(f"ResNet-18 + Adam, {epochs} epochs; MB and seconds per checkpoint")
    print(f"{'epoch':>5} {'best':>4} {'before MB':>10} {'before s':>9} {'after MB':>9} {'after s':>8}")
    for r in rows:
        print(
            f"{r['epoch']:>5} {r['best_epoch']:>4} {r['before_bytes'] / 1e6:>10.1f} {r['before_s']:>9.3f} "
            f"{r['after_bytes'] / 1e6:>9.1f} {r['after_s']:>8.3f}"
        )
    before_mb = figures.record("before", "mb", value=sum(r["before_bytes"] for r in rows) / len(rows) / 1e6)
    before_s = figures.record("before", "seconds", value=sum(r["before_s"] for r in rows) / len(rows))
    for every in (1, 2):
        # An epoch that writes no checkpoint costs nothing; the mean is still over every epoch.
        kept = [r for r in rows if r["epoch"] % every == 0]
        mb = sum(r["after_bytes"] for r in kept) / len(rows) / 1e6
        seconds = sum(r["after_s"] for r in kept) / len(rows)
        after = figures.record(
            "after",
            f"every_{every}",
            value={"mb": mb, "seconds": seconds, "ratio_bytes": mb / before_mb, "ratio_seconds": seconds / before_s},
        )
        print(
            f"per epoch, checkpoint_every {every}: before {before_mb:.1f} MB {before_s:.3f} s, after "
            f"{after['mb']:.1f} MB {after['seconds']:.3f} s; ratio after/before {after['ratio_bytes']:.2f} (bytes) "
            f"{after['ratio_seconds']:.2f} (seconds)"
        )
    figures.write()


if __name__ == "__main__":
    main()
