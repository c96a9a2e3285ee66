"""Does the harness's search (Optuna TPE proposing, ASHA stopping) find a good configuration for
fewer epochs than a grid? Against random search with the same ASHA, and the full grid, at equal
budget, over several seeds.

The objective is real: CancerNet trained by the harness's `fit` on ../shared/data/idc_sample
(fold 0 of its patient split), on a grid over four of the five hyperparameters its search space
samples (learning rate, batch size, convolutional and dense dropout; the fifth, the epoch budget,
is what the search spends), every configuration trained once to the end and its per-epoch
objective (the selected epoch's validation accuracy, what a trial reports) tabulated. The searchers
see the grid as the space declares it: batch size categorical, the others ordered (each a range
in the space, so TPE may learn from neighbouring values). Training is seeded, so a search that trains a
configuration sees exactly its tabulated curve: each search replays the table through the
harness's own searcher (PerBaselineSearcher: per-baseline Optuna studies with the pruning-aware
bookkeeping) and scheduler (PerBaselineScheduler: ASHA per baseline), one trial at a time, and
pays one epoch per epoch reported. As in the sweep, the configuration a search returns is its best
trial among those that ran to their end (ASHA-stopped trials are not tested, so never win).

Budget to target: the epochs a search spends until it returns a configuration within 0.5 point of
the grid's best; the grid's own budget is the full grid (it knows its best only at the end). The
ratio is to that. A search that never gets there within the grid's budget counts as the budget.

Run: .venv/bin/python bench/search_efficiency.py          (about 20 minutes: the grid's training)
     .venv/bin/python bench/search_efficiency.py --smoke  (a synthetic tree, a 2x2 grid: a test runs it)
     ... --figures PATH                                   (also every figure at full precision, as JSON)
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import optuna
import yaml
from _figures import Figures, add_figures_option
from ray.tune.schedulers import TrialScheduler

from harness.config import ExperimentConfig, SearchSpace, load_experiment, load_search_space
from harness.data.datasets.idc import write_synthetic_idc
from harness.data.prepare import load_or_index, prepare
from harness.experiment import epoch_metrics
from harness.run_spec import RunSpec
from harness.sweep._keys import DONE_KEY, EPOCH_KEY
from harness.sweep._search import PerBaselineScheduler, PerBaselineSearcher
from harness.train import fit

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "idc_sample"
BASELINE = "cancernet"
TOLERANCE = 0.005  # half a point of accuracy
GRIDS = {
    "full": {
        "lr": [1e-3, 3e-3, 1e-2, 3e-2],
        "batch_size": [32, 64, 128],
        "dropout_conv": [0.0, 0.25],
        "dropout_fc": [0.3, 0.5],
    },
    "smoke": {"lr": [1e-3, 1e-2], "batch_size": [32, 64]},
}


@dataclass(frozen=True)
class Budget:
    """The grid's epochs per configuration and the rungs ASHA stops at."""

    max_epochs: int
    grace_period: int
    reduction_factor: int


def _config(work: Path, root: Path, budget: Budget) -> ExperimentConfig:
    data = {
        "name": "search-efficiency",
        "dataset": {"name": "idc", "root": str(root), "allow_subset": True},
        "protocol": {"folds": 3, "test_fraction": 0.2, "seed": 0},
        "baselines": [BASELINE],
        "search": {"trials": 1, "max_epochs": budget.max_epochs, "grace_period": budget.grace_period},
        # As experiments/idc_comparison.yaml: on a sample's few hundred steps Keras' BatchNorm
        # momentum leaves CancerNet predicting one class in eval mode without it.
        "training": {"patience": budget.max_epochs, "bn_recalibration": True},
        "resources": {"cpu": 2},
        "output_dir": str(work),
    }
    path = work / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_experiment(path)


def tabulate(config: ExperimentConfig, work: Path, grid: dict[str, list]) -> dict[tuple, list[float]]:
    """Train every configuration of `grid`; returns each one's per-epoch objective."""
    manifest, _ = load_or_index(config.dataset)
    data = prepare(manifest, config.dataset, config.protocol, work / "_data")
    table = {}
    for values in itertools.product(*grid.values()):
        spec = RunSpec.build(config, data, BASELINE, fold=0, point=dict(zip(grid, values)))
        started = time.perf_counter()
        table[values] = _curve(spec, config)
        took = time.perf_counter() - started
        print(f"  {dict(zip(grid, values))}: objective {table[values][-1]:.4f} ({took:.0f} s)", flush=True)
    return table


def _curve(spec: RunSpec, config: ExperimentConfig) -> list[float]:
    """Return the objective `spec` reports after each epoch of its training."""
    curve: list[float] = []
    fit(spec, lambda report: curve.append(epoch_metrics(report, config.search.metric)["objective"]))
    return curve


@functools.cache
def _baseline_space() -> SearchSpace:
    """Return the baseline's search space, read once for every replay."""
    return load_search_space(BASELINE)


def _ordered(grid: dict[str, list]) -> set[str]:
    """Return the axes of `grid` that the baseline's search space samples from a range."""
    return {name for name in grid if _baseline_space().search[name].type != "categorical"}


def _space(grid: dict[str, list], ordered: set[str]) -> SearchSpace:
    """Return `grid` as the searcher sees it: an `ordered` axis as the index of its value, a
    categorical one as its choices."""
    search = {
        name: {"type": "int", "low": 0, "high": len(values) - 1}
        if name in ordered
        else {"type": "categorical", "choices": values}
        for name, values in grid.items()
    }
    return SearchSpace(baseline=BASELINE, search=search)


def _grid_point(grid: dict[str, list], ordered: set[str], config: dict) -> tuple:
    """Return the grid's values of a suggested `config` (the key of its curve in the table)."""
    return tuple(grid[name][config[name]] if name in ordered else config[name] for name in grid)


def replay(table: dict[tuple, list[float]], grid: dict, sampler: str, seed: int, budget: Budget, cap: int) -> list:
    """Run the harness's searcher and ASHA over `table` until `cap` epochs are spent; returns
    (epochs spent, best finished objective so far) after each finished trial."""
    ordered = _ordered(grid)
    searcher = PerBaselineSearcher(
        {BASELINE: _space(grid, ordered)}, metric="objective", mode="max", trials=cap, sampler=sampler, seed=seed
    )
    scheduler = PerBaselineScheduler(
        max_t=budget.max_epochs, grace_period=budget.grace_period, reduction_factor=budget.reduction_factor
    )
    scheduler.set_search_properties("objective", "max")
    spent, best, trace = 0, float("-inf"), []
    for number in itertools.count():
        if spent >= cap:
            return trace
        trial = SimpleNamespace(trial_id=f"t{number}", config=searcher.suggest(f"t{number}"))
        scheduler.on_trial_add(None, trial)
        curve = table[_grid_point(grid, ordered, trial.config)]
        for epoch, value in enumerate(curve, 1):
            spent += 1
            done = epoch == len(curve)
            result = {"objective": value, "training_iteration": epoch, EPOCH_KEY: epoch, DONE_KEY: float(done)}
            stop = done or scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP
            if not done:
                searcher.on_trial_result(trial.trial_id, result)
            if stop:
                scheduler.on_trial_complete(None, trial, result)
                searcher.on_trial_complete(trial.trial_id, result)
                break
        if done:
            best = max(best, curve[-1])
        trace.append((spent, best))


def epochs_to_target(trace: list[tuple[int, float]], target: float, cap: int) -> int:
    """Return the epochs spent when the best finished objective first reached `target`, else `cap`."""
    return next((spent for spent, best in trace if best >= target), cap)


def main() -> None:
    """Print each search's epochs to within half a point of the grid's best, and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a synthetic tree, a 2x2 grid, 3 epochs, 2 seeds")
    # Replaying is cheap, and the median over a few seeds swings by several hundredths.
    parser.add_argument("--seeds", type=int, default=50)
    add_figures_option(parser)
    args = parser.parse_args()
    figures = Figures(args.figures)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = GRIDS["smoke" if args.smoke else "full"]
    budget = Budget(3, 1, 3) if args.smoke else Budget(9, 1, 3)
    seeds = 2 if args.smoke else args.seeds
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        root = write_synthetic_idc(work / "idc", patients=8) if args.smoke or not SAMPLE.is_dir() else SAMPLE
        print(f"tabulating {BASELINE} on {root}: {len(list(itertools.product(*grid.values())))} configurations")
        table = tabulate(_config(work, root, budget), work, grid)
    curves = [{"point": dict(zip(grid, values)), "objectives": curve} for values, curve in table.items()]
    figures.record("grid", "curves", value=curves)
    cap = figures.record("grid", "epochs", value=sum(len(curve) for curve in table.values()))
    best = figures.record("grid", "best", value=max(curve[-1] for curve in table.values()))
    target = figures.record("target", value=best - TOLERANCE)
    print(f"\ngrid: {len(table)} configurations, {cap} epochs; its best objective {best:.4f}")
    columns = "epochs to within 0.5 pt (median, mean, max) | ratio to the grid (median, mean, max)"
    print(f"\n| search | seeds | {columns} | reached |")
    print("|---|---:|---:|---:|---:|")
    print(f"| grid | 1 | {cap}, {cap}, {cap} | 1.00, 1.00, 1.00 | 1/1 |")
    for label, sampler in (("ASHA + TPE (harness)", "tpe"), ("ASHA + random", "random")):
        traces = [replay(table, grid, sampler, seed, budget, cap) for seed in range(seeds)]
        needed = [epochs_to_target(t, target, cap) for t in traces]
        summary = {"median": statistics.median(needed), "mean": statistics.mean(needed), "max": max(needed)}
        row = figures.record(
            "searches",
            label,
            value={
                "sampler": sampler,
                "seeds": seeds,
                "epochs_to_target": needed,
                "reached": sum(any(b >= target for _, b in t) for t in traces),
                **summary,
                "ratio": {name: value / cap for name, value in summary.items()},
            },
        )
        ratios = f"{row['ratio']['median']:.2f}, {row['ratio']['mean']:.2f}, {row['ratio']['max']:.2f}"
        epochs = f"{row['median']:g}, {row['mean']:.1f}, {row['max']}"
        print(f"| {label} | {seeds} | {epochs} | {ratios} | {row['reached']}/{seeds} |")
    figures.write()


if __name__ == "__main__":
    main()
