"""What a shared MLflow server takes: many trials logging at once, per backend.

Run: .venv/bin/python bench/tracking_load.py [--writers 64] [--epochs 50] [--backends sqlite,postgresql]
     .venv/bin/python bench/tracking_load.py --smoke   (4 writers, 5 epochs: `make test-cluster` runs it)
     ... --figures PATH                                  (also every figure at full precision, as JSON)

For each backend it starts `harness server` on 127.0.0.1 (SQLite: a new file; PostgreSQL: a
throwaway cluster from Debian's `postgresql` binaries, listening on 127.0.0.1 only, skipped with
the reason when they are absent) and starts that many writer processes at once. Each logs what a
trial logs, through the harness's own Tracker: a run with tags and params, one batch of the
per-epoch metrics for every epoch, a confusion matrix, predictions and a gallery as artifacts, and
its end. It then reads every run back and prints, per backend: metric points written against
expected (lost must be 0), calls that failed after the client's retries, p50/p99 latency of one
epoch's metric batch, and metric points per second over the whole load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from _figures import Figures, add_figures_option

METRICS_PER_EPOCH = 30  # train_loss, val_*, sel_val_*, selected_epoch, objective: what log_epoch writes
ARTIFACT_BYTES = {"confusion_matrix.json": 200, "predictions.csv": 40_000, "maps_best.png": 60_000}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; Debian's package creates the postgres user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """Run a throwaway PostgreSQL cluster in `folder` on 127.0.0.1; yields its SQLAlchemy URL."""
    binaries = _postgres_bin()
    if binaries is None:
        raise RuntimeError("Debian's postgresql package is not installed (apt-get install postgresql)")
    data, port = folder / "pgdata", _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        # The postgres user must reach the folder through the scratch folders above it.
        for above in folder.parents:
            if above == Path(tempfile.gettempdir()):
                break
            above.chmod(0o755)
    subprocess.run(
        _as_postgres([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "bench"]),
        check=True,
        capture_output=True,
    )
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c max_connections=300"
    subprocess.run(
        _as_postgres(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-w",
                "start",
                "-l",
                str(folder / "postgres.log"),
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            _as_postgres([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "mlflow"]),
            check=True,
            capture_output=True,
        )
        yield f"postgresql://bench@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), capture_output=True
        )


def _writer(args: tuple[str, str, int, int, str]) -> tuple[list[str], list[float]]:
    """Log one trial's worth to the server; returns (the errors of calls that failed after the
    client's retries, seconds per metric batch)."""
    uri, experiment, index, epochs, artifacts = args
    from harness import tracking

    tracker = tracking.Tracker(uri)
    failed: list[str] = []
    latencies: list[float] = []
    try:
        experiment_id = tracker.experiment_id(experiment)
        run_id = tracker.start_run(
            experiment_id,
            name=f"writer {index}",
            run_type=tracking.RunType.TRIAL,
            tags={tracking.BASELINE: "load", tracking.TRIAL_ID: str(index)},
            params={"lr": 0.001, "batch_size": 32, "writer": index},
        )
    except Exception as exc:
        return [_first_line(exc)], latencies
    rng = np.random.default_rng(index)
    for epoch in range(1, epochs + 1):
        metrics = {f"metric_{k:02d}": float(v) for k, v in enumerate(rng.random(METRICS_PER_EPOCH))}
        started = time.perf_counter()
        try:
            tracker.log_metrics(run_id, metrics, step=epoch)
        except Exception as exc:
            failed.append(_first_line(exc))
        latencies.append(time.perf_counter() - started)
    for file in sorted(Path(artifacts).iterdir()):
        try:
            tracker.log_file(run_id, file, "test")
        except Exception as exc:
            failed.append(_first_line(exc))
    try:
        tracker.finish(run_id, tracking.FINISHED)
    except Exception as exc:
        failed.append(_first_line(exc))
    return failed, latencies


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:200]


def _artifacts(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in ARTIFACT_BYTES.items():
        (folder / name).write_bytes(os.urandom(size))
    return folder


def _written(uri: str, experiment: str) -> int:
    """Return how many metric points the experiment's runs hold, read back through the server."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=10_000) if found else []
    return sum(len(client.get_metric_history(run.info.run_id, key)) for run in runs for key in run.data.metrics)


def load(backend: str, store: str, folder: Path, writers: int, epochs: int) -> dict:
    """Start `harness server` on `store` and run the writers against it; returns the figures."""
    from harness.server import start_server

    server = start_server(
        store,
        folder / "artifacts",
        host="127.0.0.1",
        port=_free_port(),
        workers=4,
        log=folder / f"server-{backend}.log",
    )
    try:
        files = str(_artifacts(folder / "files"))
        jobs = [(server.uri, "load", i, epochs, files) for i in range(writers)]
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(writers) as pool:
            outcomes = pool.map(_writer, jobs)
        seconds = time.perf_counter() - started
        written = _written(server.uri, "load")
    finally:
        server.stop()
    latencies = np.array([t for _, ts in outcomes for t in ts])
    expected = writers * epochs * METRICS_PER_EPOCH
    return {
        "written": written,
        "expected": expected,
        "lost": expected - written,
        "failed_calls": sum(len(f) for f, _ in outcomes),
        "errors": Counter(e for f, _ in outcomes for e in f).most_common(3),
        "batches": int(latencies.size),
        "p50_ms": float(np.percentile(latencies, 50) * 1000) if latencies.size else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99) * 1000) if latencies.size else float("nan"),
        "seconds": seconds,
        "points_per_s": written / seconds,
    }


def _row(backend: str, figures: dict) -> str:
    errors = "".join(f"\n    {n} x {error}" for error, n in figures["errors"])
    return (
        f"{backend:<11} {figures['written']:>8,.0f} / {figures['expected']:<8,.0f} lost {figures['lost']:<4,.0f} "
        f"failed calls {figures['failed_calls']:<4,.0f} batch p50 {figures['p50_ms']:7.1f} ms  "
        f"p99 {figures['p99_ms']:7.1f} ms  {figures['points_per_s']:8,.0f} points/s{errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--smoke", action="store_true", help="4 writers, 5 epochs (for the tests)")
    add_figures_option(parser)
    args = parser.parse_args()
    figures = Figures(args.figures)
    if args.smoke:
        # Concurrent writers, as many as the server has workers: each writer is a process that
        # imports MLflow, which is most of the smoke's time on 2 cores.
        args.writers, args.epochs = 4, 5
    writers, epochs = figures.record("writers", value=args.writers), figures.record("epochs", value=args.epochs)
    metrics = figures.record("metrics_per_epoch", value=METRICS_PER_EPOCH)
    print(f"{writers} writers x {epochs} epochs x {metrics} metrics, 3 artifacts each", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            folder = Path(tmp) / backend
            if backend == "sqlite":
                loaded = load(backend, f"sqlite:///{folder / 'mlflow.db'}", folder, writers, epochs)
                print(_row(backend, figures.record("backends", backend, value=loaded)))
                continue
            try:
                with postgres(folder / "pg") as url:
                    loaded = load(backend, url, folder, writers, epochs)
                    print(_row(backend, figures.record("backends", backend, value=loaded)), flush=True)
            except RuntimeError as exc:
                skipped = figures.record("backends", backend, value={"skipped": str(exc)})
                print(f"{backend:<11} skipped: {skipped['skipped']}", flush=True)
    sys.stdout.flush()
    figures.write()


if __name__ == "__main__":
    main()
