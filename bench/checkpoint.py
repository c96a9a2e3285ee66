"""Bytes and seconds a sweep trial spends on checkpoints per epoch: the layout before (the model,
the optimiser and a separate copy of the best epoch's weights, every epoch) against the current one
(the best weights stored once when the best epoch is the current one), at checkpoint_every 1 and 2.

ResNet-18 with Adam on synthetic IDC patches at 50 px; every epoch's TrainState is taken from a real
`fit` and written with torch.save (what a trial writes) to a scratch folder, both layouts in the
same epoch, so the ratio compares the same states. Seconds include building the state (copying
the weights and the optimiser) and the write.

Run: .venv/bin/python bench/checkpoint.py            (8 epochs)
     .venv/bin/python bench/checkpoint.py --smoke    (2 epochs: a test runs it)
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import yaml

from harness.config import load_experiment
from harness.data.datasets.idc import write_synthetic_idc
from harness.data.prepare import load_or_index, prepare
from harness.run_spec import RunSpec
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
    path = folder / "trial.pt"
    torch.save(build(), path)
    return path.stat().st_size, time.perf_counter() - started


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
    args = parser.parse_args()
    epochs = 2 if args.smoke else 8
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)

        def measure(entry: EpochReport) -> None:
            before = _write(lambda: _before(entry.snapshot()), folder)
            after = _write(entry.snapshot, folder)
            rows.append((entry.epoch, entry.best_epoch, before, after))

        fit(_spec(folder, epochs), measure)
    print(f"ResNet-18 + Adam, {epochs} epochs; MB and seconds per checkpoint")
    print(f"{'epoch':>5} {'best':>4} {'before MB':>10} {'before s':>9} {'after MB':>9} {'after s':>8}")
    for epoch, best, (b_bytes, b_s), (a_bytes, a_s) in rows:
        print(f"{epoch:>5} {best:>4} {b_bytes / 1e6:>10.1f} {b_s:>9.3f} {a_bytes / 1e6:>9.1f} {a_s:>8.3f}")
    before_mb = sum(r[2][0] for r in rows) / len(rows) / 1e6
    before_s = sum(r[2][1] for r in rows) / len(rows)
    for every in (1, 2):
        kept = [r for r in rows if r[0] % every == 0]
        mb = sum(r[3][0] for r in kept) / len(rows) / 1e6
        seconds = sum(r[3][1] for r in kept) / len(rows)
        print(
            f"per epoch, checkpoint_every {every}: before {before_mb:.1f} MB {before_s:.3f} s, after {mb:.1f} MB "
            f"{seconds:.3f} s; ratio after/before {mb / before_mb:.2f} (bytes) {seconds / before_s:.2f} (seconds)"
        )


if __name__ == "__main__":
    main()
