"""What the harness's sweep costs over a bare Ray Tune Tuner running the same training.

Run: .venv/bin/python bench/sweep_overhead.py [--trials N] [--epochs E] [--rounds R]
     .venv/bin/python bench/sweep_overhead.py --smoke   (2 trials, 1 epoch, 1 round, 8 patients: a test runs it)
     ... --figures PATH                                 (also every figure at full precision, as JSON)

Both sides train the same small CancerNet configurations (batch 8, E epochs) on a synthetic IDC
tree, with the same concurrency, and each starts its own embedded Ray and prepares the data:
- harness: `run_sweep` with Optuna (random sampler), ASHA (never stopping: grace = max_epochs),
  MLflow tracking to SQLite (a run per trial, one log_batch per epoch, test artifacts and plots),
  an epoch checkpoint per trial and the Optuna study in SQLite; no fold retrain and no floors
  (`floors: []`: they are models of their own, which the bare side does not fit);
- bare: a Tuner over the very points the harness's trial runs logged (their sampled
  hyperparameters), each built into the same RunSpec (`RunSpec.build`), whose trainable calls the
  same `fit` and reports validation loss to Tune; no tracking, no checkpoints.
Rounds alternate the two in the same folders, as a researcher's repeated sweeps would: the first
harness round also creates the MLflow and Optuna SQLite stores, the first of each also packs the
data cache. It prints each wall time and the ratio harness/bare of the medians, which should stay
at or below 1.1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from _figures import Figures, add_figures_option

if TYPE_CHECKING:
    from harness.config import ExperimentConfig
    from harness.data.prepare import PreparedData

TRIALS, EPOCHS, ROUNDS = 6, 2, 3


def _experiment(root: Path, out: Path, trials: int, epochs: int) -> Path:
    path = out / "overhead.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "overhead",
                "dataset": {"name": "idc", "root": str(root), "allow_subset": True},
                "protocol": {"folds": 3, "test_fraction": 0.25, "seed": 0},
                "baselines": [{"name": "cancernet", "fixed": {"batch_size": 8, "epochs_max": epochs}}],
                "search": {
                    "trials": trials,
                    "max_epochs": epochs,
                    "grace_period": epochs,
                    "sampler": "random",
                    "max_concurrent": 2,
                    "retrain": "none",
                },
                "resources": {"cpu": 1},
                "training": {"patience": epochs},
                "floors": [],
                "output_dir": str(out / "results"),
            }
        )
    )
    return path


def _value(text: str) -> int | float | str:
    # MLflow keeps params as strings; the points go back to `RunSpec.build` with their types.
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def harness_sweep(path: Path) -> tuple[float, list[dict]]:
    """Run the experiment through `run_sweep`; returns wall seconds and the sampled point each of
    its trial runs logged (not the floors' or any other run type the sweep nests under its run)."""
    from harness import tracking
    from harness.config import load_experiment
    from harness.sweep import run_sweep

    config = load_experiment(path)
    searched = set(config.baseline_space("cancernet").search)
    started = time.perf_counter()
    summary = run_sweep(config)
    seconds = time.perf_counter() - started
    tracker = tracking.Tracker(summary.tracking_uri)
    experiment_id = tracker.experiment_id(config.name, create=False)
    runs = tracker.child_runs(experiment_id, summary.parent_run_id, tracking.RunType.TRIAL)
    return seconds, [{k: _value(v) for k, v in r.data.params.items() if k in searched} for r in runs]


def _bare_trial(trial: dict, *, config: ExperimentConfig, data: PreparedData) -> None:
    from ray import tune

    from harness.run_spec import RunSpec
    from harness.train import fit

    spec = RunSpec.build(config, data, "cancernet", fold=config.protocol.search_fold, point=trial["point"])
    fit(spec, lambda e: tune.report({"val_loss": e.val["loss"]}))


def bare_tuner(path: Path, points: list[dict], work: Path) -> float:
    """Prepare the same data and run `points` through a plain Tuner; returns wall seconds."""
    import ray
    from ray import tune

    from harness.config import load_experiment
    from harness.data.prepare import load_or_index, prepare
    from harness.environment import EMBEDDED_RAY, environment

    config = load_experiment(path)
    started = time.perf_counter()
    manifest, _ = load_or_index(config.dataset)
    data = prepare(manifest, config.dataset, config.protocol, work / "_data")
    with environment(EMBEDDED_RAY):  # the Ray settings the harness's own sweep starts with
        ray.init(address="local", include_dashboard=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_bare_trial, config=config, data=data), {"cpu": 1}),
            param_space={"point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    if results.errors:
        # A bare side whose trials fail at once would make the harness look cheap.
        raise SystemExit(f"{len(results.errors)} bare trial(s) failed; the first: {results.errors[0]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--smoke", action="store_true", help="2 trials, 1 epoch, 1 round, 8 patients (for the tests)")
    add_figures_option(parser)
    args = parser.parse_args()
    figures = Figures(args.figures)
    if args.smoke:
        args.trials, args.epochs, args.rounds = 2, 1, 1
    figures.record("trials", value=args.trials)
    epochs = figures.record("epochs", value=args.epochs)

    from harness.data.datasets.idc import write_synthetic_idc

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_idc(Path(tmp) / "idc", patients=8 if args.smoke else 20, seed=1)
        out, bare_work = Path(tmp) / "harness", Path(tmp) / "bare"
        out.mkdir()
        path = _experiment(root, out, args.trials, args.epochs)
        for round_ in range(args.rounds):
            harness_s, points = harness_sweep(path)
            rounds.append(
                {"harness_s": harness_s, "bare_s": bare_tuner(path, points, bare_work), "trials": len(points)}
            )
            print(
                f"round {round_ + 1}: harness sweep {rounds[-1]['harness_s']:.1f} s, bare Tuner "
                f"{rounds[-1]['bare_s']:.1f} s ({rounds[-1]['trials']} trials x {epochs} epochs each)",
                flush=True,
            )
    figures.record("rounds", value=rounds)
    harness = figures.record("median", "harness_s", value=statistics.median(r["harness_s"] for r in rounds))
    bare = figures.record("median", "bare_s", value=statistics.median(r["bare_s"] for r in rounds))
    ratio = figures.record("median", "ratio", value=harness / bare)
    print(
        f"median wall time: harness {harness:.3f} s, bare Tune {bare:.3f} s; ratio harness/bare {ratio:.2f} "
        f"(target <= 1.1)"
    )
    figures.write()


if __name__ == "__main__":
    main()
