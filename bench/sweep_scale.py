"""How the harness's sweep holds up as it grows: 100, 1,000 and 5,000 trials through the real
harness path against a bare Ray Tune Tuner training the same points, and the Optuna storages compared.

Run: .venv/bin/python bench/sweep_scale.py [--trials 100,1000,5000] [--bare-sizes 100,1000]
                                            [--storages sqlite,postgresql,journal] [--storage-size 1000]
     .venv/bin/python bench/sweep_scale.py --project (the smallest size only; prints what the rest would take)
     .venv/bin/python bench/sweep_scale.py --cluster netns [--workers 2]   (as root: on a namespaced cluster)
     .venv/bin/python bench/sweep_scale.py --smoke   (2 trials, SQLite only, under a minute: a test runs it)
     .venv/bin/python bench/sweep_scale.py --study-only [--trials ...] [--storages ...] [--concurrency 2]
                                            (the harness's searcher alone, no Ray, no training: bench/_study_scale.py)
     ... --figures PATH                               (also every figure at full precision, as JSON)

The trainable is a real small baseline: CancerNet, batch 8, on a few synthetic IDC patches (8
patients), 3 epochs, ASHA rungs at epochs 1 and 3, as many trials at once as the machine has CPUs.
- harness: `run_sweep` (the driver, Optuna's TPE sampler with the study in the storage compared,
  ASHA, one MLflow run per trial with its per-epoch metrics and test artifacts, a checkpoint per
  epoch; no fold retrain and no floors, which the bare side does not fit), then the leaderboard
  built, written and attached to the sweep's run as `harness leaderboard` does;
- bare: a Tuner over the points the harness's study sampled, each trained for exactly the epochs
  it trained in the harness's sweep (its intermediate values) by the same `fit`; no tracking, no
  checkpoints, no searcher.
Each side runs in a fresh process of this script, so its CPU time and peak RSS are its own: with
`--cluster local` on this host with a Ray embedded in it and the stores in SQLite files; with
`--cluster netns` on the driver host of tools/netns_cluster.py's cluster (a Ray head, `--workers`
worker hosts of one CPU each, the MLflow server on PostgreSQL, each in a network namespace of its
own), the trials logging to that server over the cluster's network.

Measured per size, in the driver's process: wall time (data preparation and Ray's start included,
both sides alike) and the ratio harness/bare; trials per minute; driver CPU seconds per trial
(user+system of the driver process alone, not Ray's or the trials' processes) over the whole sweep
and over the search (first suggestion to last trial end); the searcher's ask (suggest) and tell
(on_trial_complete) latency over the first and the last 10% of the study; MLflow request latency,
two ways: every call the driver makes through MlflowClient, and a probe thread in the driver
logging one metric to a run of its own in the same store every 0.5 s while the sweep runs (what a
trial's logging call waits for under this load); the driver's peak RSS. The trials' own MLflow
calls run in Ray's worker processes and are not timed here (bench/tracking_load.py loads a server
with them). After the smallest size, the wall time of the others is projected (linear in trials)
before they start.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import yaml
from _figures import Figures, add_figures_option

if TYPE_CHECKING:
    from harness.config import ExperimentConfig
    from harness.data.prepare import PreparedData

SIZES, STORAGES, STORAGE_SIZE = (100, 1000, 5000), ("sqlite", "postgresql", "journal"), 1000
EPOCHS, PATIENTS, PATCHES_PER_CLASS = 3, 8, (6, 4)
PROBE_S = 0.5
# Ray's own anchor: 10,000 one-second trials on one 16-CPU node in 715 s against a 625 s floor.
RATIO_TARGET, RATIO_SIZE = 1.14, 1000
CPU_FLAT_TARGET, ASK_P99_TARGET_MS, ASK_SIZE = 2.0, 100.0, 5000


def _experiment(root: Path, out: Path, trials: int, storage: str | None, where: Where) -> Path:
    path = out / "scale.yaml"
    search = {
        "trials": trials,
        "max_epochs": EPOCHS,
        "grace_period": 1,
        "reduction_factor": 3,
        "max_concurrent": where.concurrency,
        "retrain": "none",
        "register_models": False,
        "optuna_storage": storage,
    }
    experiment = {
        # One experiment per run: on a cluster every run shares the one MLflow server.
        "name": f"scale-{out.name}",
        "dataset": {"name": "idc", "root": str(root), "allow_subset": True},
        "protocol": {"folds": 3, "test_fraction": 0.25, "seed": 0},
        "baselines": [{"name": "cancernet", "fixed": {"batch_size": 8, "epochs_max": EPOCHS}}],
        "search": search,
        "resources": {"cpu": 1},
        "training": {"patience": EPOCHS},
        "floors": [],
        "output_dir": str(out / "results"),
        **({"tracking_uri": where.tracking_uri} if where.tracking_uri else {}),
    }
    path.write_text(yaml.safe_dump(experiment))
    return path


def percentiles(seconds: list[float]) -> dict[str, float]:
    """Return the p50 and p99 of `seconds` in milliseconds (nearest rank; NaN when empty)."""
    if not seconds:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    ranked = sorted(seconds)
    p99 = ranked[math.ceil(0.99 * len(ranked)) - 1]  # the nearest rank
    return {"p50_ms": statistics.median(ranked) * 1e3, "p99_ms": p99 * 1e3}


def ends(seconds: list[float]) -> dict[str, dict[str, float]]:
    """Return the percentiles of the first and the last 10% of `seconds` (at least one call each)."""
    tenth = max(1, len(seconds) // 10)
    return {"first": percentiles(seconds[:tenth]), "last": percentiles(seconds[-tenth:])}


def _timing(owner: type, name: str, into: list[float], keep: Callable[[Any], bool] = lambda _: True) -> None:
    """Replace method `name` of class `owner` (in this process only) by one that appends its
    latency to `into` whenever `keep(result)`."""
    original = getattr(owner, name)

    @wraps(original)
    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = original(self, *args, **kwargs)
        if keep(result):
            into.append(time.perf_counter() - started)
        return result

    setattr(owner, name, timed)


class _Searcher:
    """The harness searcher's ask and tell latencies, and the driver's CPU time from its first ask
    to its last tell (the search, without the data's preparation or Ray's start)."""

    def __init__(self) -> None:
        from harness.sweep._search import PerBaselineSearcher

        self.asks: list[float] = []
        self.tells: list[float] = []
        self.cpu: list[float] = []  # the process's CPU seconds at the first ask and at each tell
        _timing(PerBaselineSearcher, "suggest", self.asks, self._asked)
        _timing(PerBaselineSearcher, "on_trial_complete", self.tells, self._told)

    def _asked(self, suggestion: Any) -> bool:
        if not self.cpu:
            self.cpu.append(time.process_time())
        return isinstance(suggestion, dict)  # not the FINISHED said once the budget is handed out

    def _told(self, _: Any) -> bool:
        self.cpu[1:] = [time.process_time()]
        return True

    def search_cpu(self) -> float:
        """Return the driver's CPU seconds from the first ask to the last tell."""
        return self.cpu[-1] - self.cpu[0]


class _Tracking:
    """Every MlflowClient call the driver's threads make, timed (the probe's left out)."""

    def __init__(self) -> None:
        from mlflow import MlflowClient

        self.calls: list[float] = []
        for name in [n for n in vars(MlflowClient) if not n.startswith("_") and callable(getattr(MlflowClient, n))]:
            _timing(MlflowClient, name, self.calls, lambda _: threading.current_thread().name != "probe")


@contextmanager
def _probe(tracking_uri: str, experiment: str) -> Iterator[list[float]]:
    """Log one metric every PROBE_S seconds to a run of its own (in experiment `experiment`, in the
    same store) from a thread of the driver while the block runs; yields the calls' latencies."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from harness.locking import store_lock

    client = MlflowClient(tracking_uri)
    with store_lock(tracking_uri):  # the harness creates a new SQLite store under this lock too
        run = client.create_run(client.create_experiment(experiment), run_name="probe").info.run_id
    latencies: list[float] = []
    stop = threading.Event()

    def log() -> None:
        step = 0
        while not stop.wait(PROBE_S):
            started = time.perf_counter()
            client.log_batch(run, metrics=[Metric("probe", float(step), int(time.time() * 1000), step)])
            latencies.append(time.perf_counter() - started)
            step += 1

    thread = threading.Thread(target=log, name="probe", daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()
        client.set_terminated(run)


def _leaderboard(config: ExperimentConfig, tracking_uri: str) -> None:
    """Build, write and attach the experiment's leaderboard, as `harness leaderboard` does."""
    from harness.leaderboard import build_leaderboard, write_leaderboard
    from harness.leaderboard.attach import attach_leaderboard

    board = build_leaderboard(tracking_uri, config.name)
    written = write_leaderboard(board, config.results_dir)
    attach_leaderboard(tracking_uri, [config.name], board.runs.split_hash, written, config.results_dir)


def _points(config: ExperimentConfig) -> list[dict[str, Any]]:
    """Return each sampled point of the sweep's study with the epochs its trial trained."""
    import optuna

    from harness.sweep._search import optuna_storage

    storage = optuna_storage(config.resolved_optuna_storage())
    [name] = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    return [{**t.params, "epochs_max": len(t.intermediate_values)} for t in trials if t.intermediate_values]


def harness_side(path: Path, address: str | None) -> dict[str, Any]:
    """Run the experiment at `path` through `run_sweep` (on the Ray cluster at `address`, else an
    embedded one) and its leaderboard; returns what the driver measured and the points the study
    sampled."""
    from harness.config import load_experiment
    from harness.sweep import run_sweep

    config = load_experiment(path)
    uri = config.resolved_tracking_uri()
    searcher = _Searcher()
    with _probe(uri, f"{config.name}-probe") as probe:
        tracking = _Tracking()
        started, cpu = time.perf_counter(), time.process_time()
        run_sweep(config, address=address)
        swept = time.perf_counter()
        _leaderboard(config, uri)
        ended = time.perf_counter()
    return {
        "wall_s": ended - started,
        "leaderboard_s": ended - swept,
        "cpu_s": time.process_time() - cpu,
        "search_cpu_s": searcher.search_cpu(),
        "asks": searcher.asks,
        "tells": searcher.tells,
        "driver_calls": tracking.calls,
        "probe": probe,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "points": _points(config),
    }


def _bare_trial(trial: dict, *, config: ExperimentConfig, data: PreparedData) -> None:
    from ray import tune

    from harness.run_spec import RunSpec
    from harness.train import fit

    spec = RunSpec.build(config, data, "cancernet", fold=config.protocol.search_fold, point=trial["point"])
    fit(spec, lambda e: tune.report({"val_loss": e.val["loss"]}))


def bare_side(path: Path, points: list[dict[str, Any]], work: Path, address: str | None) -> dict[str, Any]:
    """Prepare the same data and train `points` (each for its epochs) through a plain Tuner with
    the harness's concurrency, on the Ray cluster at `address` (else an embedded one); returns its
    wall seconds."""
    import ray
    from ray import tune

    from harness.config import load_experiment
    from harness.data.prepare import load_or_index, prepare
    from harness.environment import EMBEDDED_RAY, environment

    config = load_experiment(path)
    started = time.perf_counter()
    manifest, _ = load_or_index(config.dataset)
    data = prepare(manifest, config.dataset, config.protocol, work / "_data")
    if address is not None:
        ray.init(address=address, configure_logging=False)
    else:
        with environment(EMBEDDED_RAY):  # the Ray settings the harness's own sweep starts with
            ray.init(address="local", include_dashboard=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_bare_trial, config=config, data=data), {"cpu": 1}),
            param_space={"point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(max_concurrent_trials=config.search.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(work / "ray"), verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    if results.errors:
        # A bare side whose trials fail at once would make the harness look cheap.
        raise SystemExit(f"{len(results.errors)} bare trial(s) failed; the first: {results.errors[0]}")
    return {"wall_s": time.perf_counter() - started, "trials": len(points)}


class _Local:
    """Each side in a fresh process of this script on this host, with a Ray embedded in it and the
    harness's default stores (SQLite files)."""

    address: str | None = None
    tracking_uri: str | None = None
    concurrency = os.cpu_count() or 1

    def run(self, argv: list[str]) -> None:
        """Run `argv` (this script's arguments) to its end; raises SystemExit when it fails."""
        if subprocess.run([sys.executable, *argv]).returncode != 0:
            raise SystemExit(f"a side of the bench failed: {' '.join(argv)}")


class _Namespaced:
    """Each side in a fresh process of this script on the driver host of a namespaced cluster
    (tools/netns_cluster.py): Ray's head and workers and the MLflow server (on PostgreSQL) on hosts of
    their own, each trial logging to that server over the cluster's network."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.address: str | None = cluster.ray_address
        self.tracking_uri: str | None = cluster.tracking_uri
        self.concurrency = cluster.worker_count * cluster.worker_cpus

    def run(self, argv: list[str]) -> None:
        """Run `argv` (this script's arguments) on the driver host to its end; raises SystemExit when it fails."""
        if self.cluster.popen(self.cluster.driver, [sys.executable, *argv]).wait() != 0:
            raise SystemExit(f"a side of the bench failed on the driver host: {' '.join(argv)}")


Where = _Local | _Namespaced


def _side(where: Where, side: str, path: Path, points: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run one side of the bench on the experiment at `path` in a fresh process (so its CPU time and
    peak RSS are its own); returns what it measured."""
    result = path.parent / f"{side}.json"
    argv = [str(Path(__file__).resolve()), "--side", side, "--experiment", str(path), "--result", str(result)]
    if points is not None:
        (path.parent / "points.json").write_text(json.dumps(points))
        argv += ["--points", str(path.parent / "points.json")]
    where.run(argv + (["--address", where.address] if where.address else []))
    return json.loads(result.read_text())


def _run_side(args: argparse.Namespace) -> None:
    """Run the side `args.side` in this process and write what it measured to `args.result`."""
    if args.side == "harness":
        measured = harness_side(args.experiment, args.address)
    else:
        points = json.loads(args.points.read_text())
        measured = bare_side(args.experiment, points, args.experiment.parent / "bare", args.address)
    args.result.write_text(json.dumps(measured))


def _latencies(figures: Figures, key: tuple[str, ...], measured: dict[str, Any]) -> dict[str, Any]:
    """Record the searcher's and MLflow's latency percentiles of one harness run under `key`;
    returns them."""
    return figures.record(
        *key,
        value={
            "ask": ends(measured["asks"]),
            "tell": ends(measured["tells"]),
            "asks": len(measured["asks"]),
            "tells": len(measured["tells"]),
            "mlflow_driver": {**percentiles(measured["driver_calls"]), "calls": len(measured["driver_calls"])},
            "mlflow_probe": {**percentiles(measured["probe"]), "calls": len(measured["probe"])},
        },
    )


def _ms(p: dict[str, float]) -> str:
    return f"{p['p50_ms']:.1f}/{p['p99_ms']:.1f} ms"


def _searcher_line(latency: dict[str, Any]) -> str:
    ask, tell = latency["ask"], latency["tell"]
    return (
        f"Optuna ask p50/p99: first 10% {_ms(ask['first'])}, last 10% {_ms(ask['last'])}; "
        f"tell: first 10% {_ms(tell['first'])}, last 10% {_ms(tell['last'])}"
    )


def _size(figures: Figures, size: int, measured: dict[str, Any], bare: dict[str, Any] | None) -> dict[str, Any]:
    """Record and print the figures of one size; returns them."""
    key = ("sizes", str(size))
    trials = figures.record(*key, "trials", value=len(measured["points"]))
    wall = figures.record(*key, "harness_s", value=measured["wall_s"])
    board = figures.record(*key, "leaderboard_s", value=measured["leaderboard_s"])
    per_min = figures.record(*key, "trials_per_min", value=size / wall * 60)
    cpu = figures.record(*key, "cpu_s_per_trial", value=measured["cpu_s"] / size)
    search = figures.record(*key, "search_cpu_s_per_trial", value=measured["search_cpu_s"] / size)
    rss = figures.record(*key, "peak_rss_mb", value=measured["peak_rss_mb"])
    latency = _latencies(figures, (*key, "latency"), measured)
    if bare is None:
        versus = "bare Tune not run at this size"
    else:
        figures.record(*key, "bare_trials", value=bare["trials"])
        bare_s = figures.record(*key, "bare_s", value=bare["wall_s"])
        versus = f"bare Tune {bare_s:.1f} s, ratio {figures.record(*key, 'ratio', value=wall / bare_s):.3f}"
    drv, probe = latency["mlflow_driver"], latency["mlflow_probe"]
    print(f"{size} trials: harness {wall:.1f} s (leaderboard {board:.1f} s), {versus}; {per_min:.1f} trials/min")
    print(f"  {trials} trials trained at least an epoch; driver peak RSS {rss:.0f} MB")
    print(f"  driver CPU per trial: {cpu:.4f} s over the sweep, {search:.4f} s over the search")
    print(f"  {_searcher_line(latency)}")
    print(
        f"  MLflow p50/p99: the driver's {drv['calls']} calls {_ms(drv)}; the probe's {probe['calls']} calls "
        f"{_ms(probe)} (one metric every {PROBE_S} s from the driver, same store)",
        flush=True,
    )
    return figures.tree["sizes"][str(size)]


def _projection(figures: Figures, first: dict[str, Any], size: int, args: argparse.Namespace, bare: set[int]) -> None:
    """Record and print the wall time of the runs still to come (the larger sizes, and the storages
    compared at a larger size), linear in trials from the first size's."""
    per_harness = first["harness_s"] / size
    per_bare = first["bare_s"] / size if "bare_s" in first else None
    parts, total = [], 0.0
    for n in args.trials[1:]:
        harness = figures.record("projection", str(n), "harness_s", value=per_harness * n)
        total += harness
        text = f"{n} trials: harness {harness:,.0f} s"
        if per_bare is not None and n in bare:
            total += figures.record("projection", str(n), "bare_s", value=per_bare * n)
            text += f", bare {per_bare * n:,.0f} s"
        parts.append(text)
    # Each storage but the sizes' own SQLite runs a sweep of its own at the storage size.
    extra = [k for k in args.storages if k != "sqlite" or args.storage_size not in args.trials]
    if args.storage_size > size and extra:
        storages = figures.record("projection", "storages_s", value=per_harness * args.storage_size * len(extra))
        total += storages
        parts.append(f"storages {', '.join(extra)} at {args.storage_size} trials: {storages:,.0f} s")
    if not parts:
        return
    total = figures.record("projection", "total_s", value=total)
    print(f"projection (linear in trials from {size}): {'; '.join(parts)}; {total / 3600:.2f} h in all", flush=True)


def _storage_url(kind: str, folder: Path, stack: ExitStack) -> str | None:
    """Return the Optuna storage URL of `kind` in `folder` (None: the harness's default SQLite
    file), PostgreSQL started for the rest of the stack."""
    if kind == "journal":
        return f"journal://{folder / 'optuna.log'}"
    if kind == "postgresql":
        from tracking_load import postgres

        tcp = stack.enter_context(postgres(folder / "pg"))
        # Through its unix socket in `folder`, which a namespaced driver host reaches as well.
        port = tcp.rsplit(":", 1)[1].split("/")[0]
        return f"postgresql+psycopg://bench@/mlflow?host={folder / 'pg'}&port={port}"
    return None


def _storages(
    figures: Figures, root: Path, tmp: Path, args: argparse.Namespace, where: Where, reuse: dict | None
) -> None:
    """Run the storage comparison at args.storage_size and print it."""
    size = figures.record("storages_size", value=args.storage_size)
    for kind in args.storages:
        with ExitStack() as stack:
            if kind == "sqlite" and reuse is not None:
                measured = reuse
            else:
                out = tmp / f"storage-{kind}"
                out.mkdir()
                try:
                    url = _storage_url(kind, out, stack)
                except RuntimeError as absent:
                    print(f"storage {kind}: skipped ({absent})")
                    continue
                measured = _side(where, "harness", _experiment(root, out, size, url, where))
        wall = figures.record("storages", kind, "harness_s", value=measured["wall_s"])
        latency = _latencies(figures, ("storages", kind, "latency"), measured)
        print(f"storage {kind} at {size} trials: harness {wall:.1f} s; {_searcher_line(latency)}", flush=True)
    _storage_verdict(figures)


def _storage_verdict(figures: Figures) -> None:
    """Record and print which storage had the lowest ask and tell p99 late in the study, and the shortest wall time."""
    measured = figures.tree.get("storages", {})
    if len(measured) < 2:
        return

    def best(call: str) -> str:
        return min(measured, key=lambda kind: measured[kind]["latency"][call]["last"]["p99_ms"])

    ask = figures.record("storages_best", "ask_p99_last", value=best("ask"))
    tell = figures.record("storages_best", "tell_p99_last", value=best("tell"))
    wall = figures.record("storages_best", "harness_s", value=min(measured, key=lambda k: measured[k]["harness_s"]))
    print(f"lowest ask p99 over the last 10%: {ask}; lowest tell p99: {tell}; shortest wall time: {wall}")


def _targets(figures: Figures, sizes: dict[int, dict[str, Any]]) -> None:
    """Record and print each target of issue 27 against this run's figures: met, not met, or not measured."""
    ratio = sizes.get(RATIO_SIZE, {}).get("ratio")
    _target(
        figures, "ratio", ratio, lambda v: v <= RATIO_TARGET,
        f"harness/bare at {RATIO_SIZE:,} trials <= {RATIO_TARGET} (Ray's anchor: 715 s against a 625 s floor)",
        "{:.3f}", f"no bare run at {RATIO_SIZE:,} trials",
    )  # fmt: skip
    cpus = [row["search_cpu_s_per_trial"] for row in sizes.values()]
    spread = max(cpus) / min(cpus) if len(cpus) > 1 and min(cpus) > 0 else None
    _target(
        figures, "cpu_flat", spread, lambda v: v <= CPU_FLAT_TARGET,
        f"driver CPU per trial over the search within {CPU_FLAT_TARGET:g}x from {min(sizes):,} to "
        f"{max(sizes):,} trials (max/min)", "{:.2f}x", "fewer than two sizes",
    )  # fmt: skip
    ask = sizes[ASK_SIZE]["latency"]["ask"]["last"]["p99_ms"] if ASK_SIZE in sizes else None
    _target(
        figures, "ask_p99", ask, lambda v: v < ASK_P99_TARGET_MS,
        f"Optuna ask p99 < {ASK_P99_TARGET_MS:g} ms at {ASK_SIZE:,} trials (last 10%)", "{:.1f} ms",
        f"no run at {ASK_SIZE:,} trials",
    )  # fmt: skip


def _target(
    figures: Figures, name: str, value: float | None, met: Callable[[float], bool], what: str, form: str, why: str
) -> None:
    """Record and print one target's value and verdict."""
    figures.record("targets", name, "value", value=value)
    verdict = figures.record(
        "targets", name, "verdict", value="not measured" if value is None else "met" if met(value) else "not met"
    )
    print(f"target: {what}: " + (f"not measured ({why})" if value is None else f"{form.format(value)}, {verdict}"))


def _sizes_option(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",") if part.strip()})


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=_sizes_option, default=list(SIZES), help="sizes, comma-separated")
    parser.add_argument("--bare-sizes", type=_sizes_option, default=None, help="sizes the bare side runs (all)")
    parser.add_argument("--storages", type=lambda t: t.split(","), default=list(STORAGES))
    parser.add_argument("--storage-size", type=int, default=STORAGE_SIZE)
    parser.add_argument(
        "--cluster",
        choices=["local", "netns"],
        default="local",
        help="local: Ray embedded on this host; netns: a Ray head, --workers workers of one CPU, the MLflow "
        "server and the driver each in a network namespace of its own (tools/netns_cluster.py, root)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker hosts of the netns cluster")
    parser.add_argument(
        "--project",
        action="store_true",
        help="run the smallest size only (and the storages if compared at that size), print the projected "
        "wall time of the rest, and stop",
    )
    parser.add_argument("--smoke", action="store_true", help="2 trials, SQLite only (for the tests)")
    parser.add_argument(
        "--study-only",
        action="store_true",
        help="drive the harness's searcher alone (no Ray, no training) at each of --trials over each of "
        "--storages, as Tune would, and measure its ask and tell latency, CPU per trial and storage size",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="trials in flight with --study-only")
    add_figures_option(parser)
    # One side of the bench, run by the bench itself in a fresh process.
    parser.add_argument("--side", choices=["harness", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--experiment", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--points", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        # The storages are compared by --study-only, which its own test runs over all three in seconds.
        args.trials, args.bare_sizes, args.storages, args.storage_size = [2], [2], ["sqlite"], 2
    unknown = sorted(set(args.storages) - set(STORAGES))
    if unknown:
        parser.error(f"--storages {unknown[0]!r}: expected some of {', '.join(STORAGES)}")
    return args


@contextmanager
def _cluster(args: argparse.Namespace, state: Path) -> Iterator[Where]:
    """Yield where the sides run: this host, or a namespaced cluster torn down after the block."""
    if args.cluster == "local":
        yield _Local()
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ is not part of the package
    from tools.netns_cluster import NetnsCluster

    with NetnsCluster(state, workers=args.workers, worker_cpus=1, prefix="scale") as cluster:
        yield _Namespaced(cluster)


def main() -> None:
    args = _arguments()
    if args.side:
        _run_side(args)
        return
    figures = Figures(args.figures)
    if args.study_only:
        with tempfile.TemporaryDirectory() as tmp:
            _study_only(args, figures, Path(tmp))
        figures.write()
        return
    with tempfile.TemporaryDirectory() as tmp, _cluster(args, Path(tmp) / "cluster") as where:
        sizes = _run(args, figures, where, Path(tmp))
    _targets(figures, sizes)
    figures.write()


def _run(args: argparse.Namespace, figures: Figures, where: Where, tmp: Path) -> dict[int, dict[str, Any]]:
    """Run every size (harness, then bare where asked) and the storage comparison in `tmp`;
    returns each size's figures."""
    from harness.data.datasets.idc import write_synthetic_idc

    bare_sizes = set(args.trials if args.bare_sizes is None else args.bare_sizes)
    figures.record("concurrency", value=where.concurrency)
    figures.record("epochs", value=EPOCHS)
    figures.record("cluster", value=args.cluster)
    root = write_synthetic_idc(tmp / "idc", patients=PATIENTS, patches_per_class=PATCHES_PER_CLASS, seed=1)
    print(
        f"CancerNet on {PATIENTS} synthetic patients, {EPOCHS} epochs, ASHA rungs at 1 and {EPOCHS}, "
        f"{where.concurrency} trials at once, cluster {args.cluster}",
        flush=True,
    )
    sizes: dict[int, dict[str, Any]] = {}
    kept = None
    for index, size in enumerate(args.trials):
        out = tmp / f"size-{size}"
        out.mkdir()
        path = _experiment(root, out, size, None, where)
        measured = _side(where, "harness", path)
        bare = _side(where, "bare", path, measured["points"]) if size in bare_sizes else None
        sizes[size] = _size(figures, size, measured, bare)
        kept = measured if size == args.storage_size else kept
        if index == 0:
            _projection(figures, sizes[size], size, args, bare_sizes)
            if args.project:
                break
    if not args.project or args.storage_size == args.trials[0]:
        _storages(figures, root, tmp, args, where, kept)
    return sizes


def _study_only(args: argparse.Namespace, figures: Figures, tmp: Path) -> None:
    """Drive the harness's searcher alone at each size over each storage in `tmp`; print and record
    each run's figures and the ask target per storage."""
    from _study_scale import cpu_ends, drive, storage_bytes

    from harness.config import load_experiment
    from harness.data.datasets.idc import write_synthetic_idc

    figures.record("study_only", "concurrency", value=args.concurrency)
    root = write_synthetic_idc(tmp / "idc", patients=PATIENTS, patches_per_class=PATCHES_PER_CLASS, seed=1)
    print(f"the harness's searcher alone (CancerNet's space), {args.concurrency} trials in flight, {EPOCHS} epochs")
    for kind in args.storages:
        for size in args.trials:
            out = tmp / f"study-{kind}-{size}"
            out.mkdir()
            with ExitStack() as stack:
                try:
                    url = _storage_url(kind, out, stack)
                except RuntimeError as absent:
                    print(f"storage {kind}: skipped ({absent})")
                    break
                where = _Local()
                where.concurrency = args.concurrency
                config = load_experiment(_experiment(root, out, size, url, where))
                run = drive(config, args.concurrency)
                key = ("study_only", kind, str(size))
                figures.record(*key, "trials", value=len(run.asks))
                figures.record(*key, "tells", value=len(run.tells))
                figures.record(*key, "ask", value=ends(run.asks))
                figures.record(*key, "start", value=ends(run.starts))
                figures.record(*key, "tell", value=ends(run.tells))
                figures.record(*key, "cpu_s_per_trial", value=cpu_ends(run.cpu))
                figures.record(*key, "wall_s", value=run.wall_s)
                figures.record(*key, "storage_mb", value=storage_bytes(config.resolved_optuna_storage()) / 2**20)
            _study_line(figures.tree["study_only"][kind][str(size)], kind, size)
            figures.write()  # after each run: the largest take hours on a small machine
    _study_targets(figures, args)


def _study_line(row: dict[str, Any], kind: str, size: int) -> None:
    cpu, ask, tell = row["cpu_s_per_trial"], row["ask"], row["tell"]
    print(
        f"{kind} {size} trials: ask p50/p99 first 10% {_ms(ask['first'])}, last 10% {_ms(ask['last'])}; "
        f"tell first {_ms(tell['first'])}, last {_ms(tell['last'])}; CPU per trial first "
        f"{cpu['first'] * 1e3:.1f} ms, last {cpu['last'] * 1e3:.1f} ms; storage {row['storage_mb']:.2f} MB; "
        f"{row['wall_s']:.1f} s",
        flush=True,
    )


def _study_targets(figures: Figures, args: argparse.Namespace) -> None:
    """Record and print the ask target per storage measured at ASK_SIZE trials."""
    for kind, rows in figures.tree["study_only"].items():
        if kind == "concurrency" or str(ASK_SIZE) not in rows:
            continue
        p99 = rows[str(ASK_SIZE)]["ask"]["last"]["p99_ms"]
        verdict = figures.record("study_only_targets", kind, value="met" if p99 < ASK_P99_TARGET_MS else "not met")
        print(
            f"target: Optuna ask p99 < {ASK_P99_TARGET_MS:g} ms at {ASK_SIZE:,} trials: {verdict} ({kind}, "
            f"{p99:.1f} ms over the last 10%)"
        )


if __name__ == "__main__":
    main()
