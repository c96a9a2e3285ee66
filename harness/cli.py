"""The `harness` command: data index, train, sweep, leaderboard.

Bad input (a missing file, an unknown key, a wrong type, an unknown baseline, a dataset root
without images) prints one line naming the file, key or value and what was expected, and exits 2
before anything is written to MLflow or results/.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional

import typer
from rich.console import Console, RenderableType
from rich.table import Table

from harness.environment import MLFLOW_QUIET, QUIET_EMBEDDED_RAY, QUIET_LIBRARIES, environment
from harness.errors import InputError, TrackingUnreachable, disk_full
from harness.table_layouts import TABLE_LAYOUTS

if TYPE_CHECKING:
    from harness.config import ExperimentConfig, LeaderboardSpec
    from harness.server import ServerProcess
    from harness.sweep import SweepSummary
    from harness.train import EpochReport

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])
data_app = typer.Typer(no_args_is_help=True, help="Index datasets and make synthetic ones.")
app.add_typer(data_app, name="data")
study_app = typer.Typer(no_args_is_help=True, help="Studies beyond the leaderboard: what a protocol choice costs.")
app.add_typer(study_app, name="study")
console = Console()
errors = Console(stderr=True)


# ctx.meta key (shared by every command's context): whether `harness --verbose` was given.
VERBOSE = "harness.verbose"


@app.callback()
def _quiet_libraries(
    ctx: typer.Context,
    verbose: bool = typer.Option(
        False, "--verbose", help="Let MLflow, Ray and Tune print their own notices and INFO logs on stderr."
    ),
) -> None:
    # Before any command imports MLflow, which reads MLFLOW_DISABLE_TELEMETRY and MLFLOW_LOGGING_LEVEL
    # when imported; the environment is put back when the command's context closes.
    ctx.meta[VERBOSE] = verbose
    ctx.with_resource(environment(MLFLOW_QUIET if verbose else {**MLFLOW_QUIET, **QUIET_LIBRARIES}))


# Filesystem errors the user can act on (a path, a permission, a full or read-only disk): one line.
FILESYSTEM_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR}
# sysexits' EX_TEMPFAIL: nothing was wrong with the command; run it again (a sweep with --resume) once
# the tracking server answers.
EXIT_TEMPFAIL = 75


def _fail(message: str, code: int) -> NoReturn:
    """Print `message` as the command's one `error:` line on stderr and exit with `code`."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn InputError, and a filesystem error on a path, into one line on stderr and exit code 2;
    a tracking server that stopped answering into one line and exit code 75."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InputError as exc:
            message = str(exc)
        except TrackingUnreachable as exc:
            _fail(str(exc), EXIT_TEMPFAIL)
        except OSError as exc:
            if exc.errno not in FILESYSTEM_ERRORS:
                raise
            message = f"{exc.filename or 'a file'}: {exc.strerror}"
        except Exception as exc:
            if not disk_full(exc):
                raise
            message = (
                f"no space left on the device ({type(exc).__name__}); runs left RUNNING are ended "
                "(orphaned) by the next sweep of the experiment once there is room"
            )
        _fail(message, 2)

    return wrapper


DEFAULT_MANIFESTS = Path("results/_data/manifests")
RootOption = typer.Option(None, "--root", help="Dataset root; overrides dataset.root of the experiment file.")
RoiOption = typer.Option(
    None, "--roi-dir", help="Folder of RoI masks named after the images; overrides dataset.roi_dir."
)
UriOption = typer.Option(None, "--tracking-uri", help="Any MLflow tracking URI; default: SQLite under output_dir.")
OutOption = typer.Option(None, "--output-dir", help="Where results/ go; overrides output_dir.")


def _load(
    experiment: Path,
    root: Path | None,
    tracking_uri: str | None,
    output_dir: Path | None,
    roi_dir: Path | None = None,
    storage: Path | None = None,
) -> ExperimentConfig:
    from harness.config import load_experiment

    return load_experiment(
        experiment,
        dataset_root=root,
        roi_dir=roi_dir,
        tracking_uri=tracking_uri,
        output_dir=output_dir,
        storage_path=storage,
    )


@data_app.command("index")
@user_errors
def data_index(
    root: Path = typer.Option(..., "--root", help="Dataset root in its published layout."),
    dataset: str = typer.Option("idc", "--dataset", help="A registered dataset: idc, bach, breakhis, ..."),
    roi_dir: Optional[Path] = typer.Option(
        None, "--roi-dir", help="BACH/BreakHis: folder of RoI masks named after the images."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Manifest file; default results/_data/manifests/<dataset>-<hash>.parquet."
    ),
    allow_subset: bool = typer.Option(False, "--allow-subset", help="Accept a sample instead of the full release."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave bad files out (each is reported), not fail."),
    strict: bool = typer.Option(False, "--strict", help="Refuse non-RGB images instead of converting them."),
) -> None:
    """Walk a dataset, check every file, and write its parquet manifest."""
    from pydantic import ValidationError

    from harness.data.datasets import DatasetSpec
    from harness.data.manifest import manifest_hash, note_change_since_last_index, write_manifest
    from harness.data.prepare import index_dataset, index_key
    from harness.preflight import writable_file, writable_folder

    try:
        spec = DatasetSpec(
            name=dataset, root=root, roi_dir=roi_dir, allow_subset=allow_subset, skip_bad=skip_bad, strict=strict
        )
    except ValidationError as exc:
        raise InputError(f"--dataset {dataset!r}: {exc.errors()[0]['msg']}") from None
    if out is not None:
        writable_file(out, "--out")
    else:
        writable_folder(DEFAULT_MANIFESTS, "manifest folder")
    manifest, notes = index_dataset(spec, show_progress=True)
    digest = manifest_hash(manifest)
    path = out or DEFAULT_MANIFESTS / f"{dataset}-{digest[:16]}.parquet"
    write_manifest(manifest, path, root=root, meta={"dataset": dataset})
    change = note_change_since_last_index(manifest, index_key(spec), path.parent)
    for note in notes + ([change] if change else []):
        errors.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    _print_manifest(manifest, path, digest)


def _print_manifest(manifest: Any, path: Path, digest: str) -> None:
    """Print a manifest's images, patient groups, classes and flags, and where it was written."""
    counts = manifest.groupby("class_name").size().to_dict()
    flags = manifest["flags"].str.split(";").explode().loc[lambda f: f != ""].value_counts().to_dict()
    console.print(
        f"{len(manifest):,} images of {manifest.patient_id.nunique()} patient groups {counts}; "
        f"flags {flags or 'none'}\n"
        f"manifest {path} (hash {digest[:16]})"
    )


@data_app.command("synth")
@user_errors
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the tree into."),
    dataset: str = typer.Option("idc", "--dataset", help="A registered dataset (bach and breakhis with RoI masks)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a small synthetic dataset of real image files in a published layout, with a learnable signal."""
    from harness.data.datasets import UnknownDatasetError
    from harness.data.datasets import dataset as registered

    try:
        entry = registered(dataset)
    except UnknownDatasetError as exc:
        raise InputError(f"--dataset: {exc}") from None
    console.print(entry.synthesise(out, seed))


@app.command()
def models() -> None:
    """List every baseline: family, source framework, input, outputs, loss and counts beside the published ones."""
    import baselines

    table = Table(title="histo-harness baselines (counts with the published row's classes)")
    for column in (
        "baseline",
        "family",
        "framework",
        "input",
        "classes",
        "outputs",
        "loss",
        "torch",
        "published",
        "harness, same convention",
    ):
        table.add_column(
            column,
            justify="right" if column in {"classes", "torch", "published", "harness, same convention"} else "left",
        )
    for s in baselines.summarise_all():
        if s.published is None:
            published = same = "-"
        else:
            published = f"{s.published:,} ({s.convention})"
            mark = "[green]= published[/]" if s.reproduced else "[yellow]differs[/]"
            same = f"{s.count_in_published_convention:,} {mark}"
        table.add_row(
            s.name,
            s.family,
            s.framework,
            s.input,
            str(s.classes),
            ", ".join(s.outputs),
            s.loss,
            f"{s.counts['torch']:,}",
            published,
            same,
        )
    console.print(table)


@contextmanager
def _interruptible(again: str) -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM raising Interrupted, which ends its runs KILLED
    (`interrupted=<signal>`); then print that it was interrupted and `again`, and exit 130 or 143."""
    from harness.interrupts import Interrupted, catching_interrupts

    try:
        with catching_interrupts():
            yield
    except Interrupted as interrupted:
        errors.print(f"interrupted ({interrupted.signal_name}); {again}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(interrupted.exit_code) from None


@app.command()
@user_errors
def train(
    experiment: Path = typer.Argument(..., help="Experiment YAML file."),
    baseline: str = typer.Option(..., "--baseline", help="Registered baseline to train with its published recipe."),
    fold: int = typer.Option(0, "--fold", min=0, help="Validation fold; the others train."),
    root: Optional[Path] = RootOption,
    roi_dir: Optional[Path] = RoiOption,
    tracking_uri: Optional[str] = UriOption,
    output_dir: Optional[Path] = OutOption,
) -> None:
    """Train one baseline on one fold with its recipe, tracked as one MLflow run."""
    from harness.experiment import set_up, train_tracked
    from harness.run_spec import RunSpec
    from harness.train import OutOfMemory

    config = _load(experiment, root, tracking_uri, output_dir, roi_dir)
    if baseline not in {b.name for b in config.baselines}:
        raise InputError(
            f"--baseline {baseline!r}: not among the experiment's baselines "
            f"({', '.join(b.name for b in config.baselines)})"
        )
    if fold >= config.protocol.folds:
        raise InputError(f"--fold {fold}: expected a fold below protocol.folds ({config.protocol.folds})")
    again = f"harness train {experiment} --baseline {baseline}" + (f" --fold {fold}" if fold else "")
    with _interruptible(f"the run ended KILLED; train again with: {again}"):
        setup = set_up(config, show_progress=True)
        spec = RunSpec.build(config, setup.data, baseline, fold=fold)
        try:
            run_id, result = train_tracked(
                config,
                setup,
                spec,
                on_epoch=lambda e: console.print(
                    f"epoch {e.epoch:>3}  train loss {e.train_loss:.4f}  val loss {e.val['loss']:.4f}  "
                    f"val acc {e.val['accuracy']:.4f}  val AUC {e.val['auc']:.4f}"
                ),
            )
        except OutOfMemory as exc:
            # The run ended FAILED with the error; the line says what to lower.
            _fail(f"out of memory: {exc}", 1)
    test = result.test.metrics if result.test else {}
    console.print(
        f"best epoch {result.best_epoch}: val acc {result.best_val['accuracy']:.4f}; "
        f"test acc {test.get('accuracy', float('nan')):.4f}, AUC {test.get('auc', float('nan')):.4f}\n"
        f"MLflow run {run_id} in {setup.tracker.uri}"
    )


AddressOption = typer.Option(
    None,
    "--address",
    envvar="RAY_ADDRESS",
    help="Ray cluster to join: auto, HOST:6379 or ray://HOST:10001; default an embedded local Ray.",
)
StorageOption = typer.Option(
    None,
    "--storage",
    help="Where Tune keeps sweeps and trial checkpoints (shared by all nodes); overrides storage_path.",
)
ResumeOption = typer.Option(False, "--resume", help="Continue the newest interrupted sweep of this experiment.")


def _embedded_ray_on_loopback(ctx: typer.Context) -> None:
    """Keep a sweep's embedded Ray on 127.0.0.1 (unless the environment says otherwise), and quiet
    unless --verbose, while the command `ctx` runs. Ray reads this at import and swaps a loopback
    address for the machine's network one, listening on every interface, unless it is 0."""
    if "ray" not in sys.modules:
        quiet = {} if ctx.meta.get(VERBOSE) else QUIET_EMBEDDED_RAY
        ctx.with_resource(environment({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **quiet}))


def _print_sweep(summary: SweepSummary, ui: str) -> None:
    """Print a sweep's trial counts per baseline, its ensembles, floors, notes and where to look
    (`ui`: the `harness ui` command that opens its trials)."""
    resumed = " (resumed)" if summary.resumed else ""
    table = Table(title=f"sweep {summary.experiment}{resumed}: {summary.wall_seconds:.0f} s")
    for column in ("baseline", "trials", "finished", "stopped early", "failed"):
        table.add_column(column, justify="left" if column == "baseline" else "right")
    for name, o in summary.baselines.items():
        causes = ", ".join(f"{cause} {n}" for cause, n in o.failures.most_common())
        failed = f"{o.failed} ({causes})" if causes else str(o.failed)
        table.add_row(name, str(o.trials), str(o.finished), str(o.stopped_early), failed)
    console.print(table)
    for e in summary.ensembles:
        folds = ", ".join(f"{acc:.3f}" for _, acc in sorted(e.fold_accuracy.items()))
        console.print(
            f"{e.baseline}: test accuracy of the {len(e.fold_accuracy)} fold models {folds}; "
            f"their softmax ensemble {e.ensemble_accuracy:.3f}"
            + (f"; registered as models:/{e.registered}@winner and @ensemble" if e.registered else ""),
            highlight=False,
        )
    if summary.floors:
        console.print(f"floors fitted on every fold and logged beside them: {', '.join(summary.floors)}")
    for note in summary.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(
        f"split {summary.split_hash[:16]}; parent run {summary.parent_run_id}; Tune storage {summary.storage}\n"
        f"look at it: {ui}",
        highlight=False,
        soft_wrap=True,
    )


def _ui_command(experiment: Path, tracking_uri: str | None, output_dir: Path | None) -> str:
    """Return the `harness ui` command that opens the trials of a sweep run with these options."""
    options = [f"--tracking-uri {tracking_uri}"] if tracking_uri else []
    options += [f"--output-dir {output_dir}"] if output_dir and not tracking_uri else []
    return " ".join(["harness ui", str(experiment), *options])


@app.command()
@user_errors
def sweep(
    ctx: typer.Context,
    experiment: Path = typer.Argument(..., help="Experiment YAML file."),
    root: Optional[Path] = RootOption,
    roi_dir: Optional[Path] = RoiOption,
    address: Optional[str] = AddressOption,
    tracking_uri: Optional[str] = UriOption,
    output_dir: Optional[Path] = OutOption,
    storage: Optional[Path] = StorageOption,
    resume: bool = ResumeOption,
) -> None:
    """Tune every baseline of an experiment with Ray Tune, Optuna and ASHA, tracked in MLflow; then
    retrain each winner on every fold and ensemble the folds on the test set."""
    config = _load(experiment, root, tracking_uri, output_dir, roi_dir, storage)
    if address is None:
        _embedded_ray_on_loopback(ctx)
    from harness.interrupts import Interrupted
    from harness.sweep import AllTrialsFailed, run_sweep

    ui = _ui_command(experiment, tracking_uri, output_dir)
    try:
        summary = run_sweep(config, address=address, resume=resume, verbose=True)
    except AllTrialsFailed as failed:
        _print_sweep(failed.summary, ui)
        _fail(str(failed), 1)
    except TrackingUnreachable as outage:
        # Its runs stay RUNNING (the store takes no write): --resume continues them.
        _fail(f"{outage}; the sweep is interrupted: continue with harness sweep {experiment} --resume", EXIT_TEMPFAIL)
    except Interrupted as interrupted:
        hint = f"; continue with: harness sweep {experiment} --resume" if interrupted.parent_run_id else ""
        errors.print(f"interrupted{hint}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(interrupted.exit_code) from None
    _print_sweep(summary, ui)


@app.command("close-orphans")
@user_errors
def close_orphans(
    experiment: Path = typer.Argument(..., help="Experiment YAML file."),
    tracking_uri: Optional[str] = UriOption,
    output_dir: Optional[Path] = OutOption,
) -> None:
    """End KILLED (orphaned=true) the runs of every sweep of the experiment whose driver on this host
    died without ending them, as the next sweep or --resume would (for a job script that outlives its
    killed driver)."""
    from harness.sweep import close_orphans as close
    from harness.tracking import open_store

    config = _load(experiment, None, tracking_uri, output_dir)
    tracker = open_store(config.resolved_tracking_uri())
    experiment_id = tracker.experiment_id(config.name, create=False)
    notes = close(tracker, experiment_id) if experiment_id else []
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    if not notes:
        console.print(f"{config.name}: no sweep left RUNNING by a dead driver on this host")


DEFAULT_STORE = Path("results/mlflow.db")  # where a sweep logs without --tracking-uri (output_dir results)


def _terminate_as_interrupt() -> None:
    """Make SIGTERM (a scheduler ending the job) raise KeyboardInterrupt as Ctrl-C does, so a server
    being started or served is stopped instead of orphaned: set before `start_server`, whose wait
    for the server stops it on an interrupt."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


def _serve(process: ServerProcess) -> None:
    """Wait on a started MLflow server until Ctrl-C or SIGTERM, then stop it."""
    try:
        process.process.wait()
    except KeyboardInterrupt:
        process.stop()


@app.command()
@user_errors
def server(
    backend_store_uri: Optional[str] = typer.Option(
        None,
        "--backend-store-uri",
        help="sqlite:///ABS/PATH.db or postgresql://...; default results/mlflow.db, the store sweeps log to "
        "without --tracking-uri.",
    ),
    artifacts_destination: Path = typer.Option(
        Path("results/mlartifacts"),
        "--artifacts-destination",
        help="Folder (or shared mount) the server keeps artifacts in.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 to serve a cluster."),
    port: int = typer.Option(5000, "--port"),
    workers: int = typer.Option(2, "--workers", min=1),
    allowed_hosts: Optional[str] = typer.Option(
        None,
        "--allowed-hosts",
        help="Host headers the server accepts, replacing MLflow's default of localhost and private IPs "
        "(e.g. mlflow,mlflow:5000,10.0.0.5:5000).",
    ),
) -> None:
    """Start an MLflow tracking server that every node's trials log to; runs until Ctrl-C or SIGTERM."""
    from harness.server import start_server

    backend = backend_store_uri or f"sqlite:///{DEFAULT_STORE.resolve()}"
    console.print(f"starting mlflow server (backend {backend}, artifacts {artifacts_destination}) ...")
    _terminate_as_interrupt()
    process = start_server(
        backend, artifacts_destination.resolve(), host=host, port=port, workers=workers, allowed_hosts=allowed_hosts
    )
    shown = "HOST" if host == "0.0.0.0" else host
    console.print(f"MLflow tracking server up; pass --tracking-uri http://{shown}:{port} (log: {process.log})")
    _serve(process)


@app.command()
@user_errors
def ui(
    experiment: Optional[Path] = typer.Argument(
        None,
        help="Experiment YAML file; default: the newest sweep's experiment in results/mlflow.db (or --output-dir's).",
    ),
    tracking_uri: Optional[str] = UriOption,
    output_dir: Optional[Path] = OutOption,
    port: int = typer.Option(
        5000, "--port", help="Where the UI listens on 127.0.0.1 (unless the store is a tracking server)."
    ),
    charts: bool = typer.Option(False, "--charts", help="Open the chart view instead of the runs table."),
) -> None:
    """Open the MLflow UI on the trials of the experiment's latest sweep (their outcome, objective and
    searched parameters as columns): serves the store on 127.0.0.1 until Ctrl-C and prints the address
    to open; for a tracking server (http), prints the address on that server."""
    from harness import tracking
    from harness.locking import sqlite_path
    from harness.mlflow_view import view_url
    from harness.server import start_server

    config = _load(experiment, None, tracking_uri, output_dir) if experiment else None
    store = (output_dir / DEFAULT_STORE.name) if output_dir else DEFAULT_STORE
    uri = config.resolved_tracking_uri() if config else tracking_uri or f"sqlite:///{store.resolve()}"
    experiment_id = _prepare_view(uri, config.name if config else None)
    if uri.startswith(("http://", "https://")):
        console.print(f"open {view_url(uri, experiment_id, charts=charts)}", highlight=False, soft_wrap=True)
        return
    _check_free(port)
    database = sqlite_path(uri)
    # Where a sweep logging straight to this store keeps artifacts; the server's own uploads go there too.
    artifacts = (database.parent if database else DEFAULT_STORE.parent) / tracking.ARTIFACTS_FOLDER
    _terminate_as_interrupt()
    process = start_server(uri, artifacts.resolve(), port=port, workers=1)
    url = view_url(process.uri, experiment_id, charts=charts)
    console.print(f"MLflow UI on {database or uri} (Ctrl-C stops it); open\n{url}", highlight=False, soft_wrap=True)
    _serve(process)


def _check_free(port: int) -> None:
    """Raise InputError when `port` is taken on 127.0.0.1."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise InputError(f"--port {port}: already in use on 127.0.0.1; pass another port") from None


def _prepare_view(uri: str, name: str | None) -> str:
    """Write the latest-sweep view of experiment `name` (default: the store's newest sweep's) and
    return the experiment's id; raises InputError when there is no sweep to show."""
    from harness.locking import sqlite_path
    from harness.mlflow_view import newest_sweep_experiment, write_latest_sweep_view
    from harness.server import check_reachable
    from harness.tracking import tracker_for

    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise InputError(f"{database}: no MLflow store there; run `harness sweep EXPERIMENT_YAML` first")
    check_reachable(uri)
    tracker = tracker_for(uri)
    experiment_id = tracker.experiment_id(name, create=False) if name else newest_sweep_experiment(tracker)
    if experiment_id is None:
        raise InputError(f"{uri}: no {f'experiment {name!r}' if name else 'sweep'} there; run `harness sweep` first")
    if not write_latest_sweep_view(tracker, experiment_id):
        raise InputError(f"{uri}: experiment {name!r} has no sweep yet; run `harness sweep` first")
    return experiment_id


ExperimentsOption = typer.Option([], "--experiment", "-e", help="An MLflow experiment to include (repeatable).")
TablesOption = typer.Option(
    [],
    "--table",
    "-t",
    help=f"Layout (repeatable): {', '.join(TABLE_LAYOUTS)}; default: the experiment file's leaderboard.tables, "
    "else summary.",
)
SplitHashOption = typer.Option(None, "--split-hash", help="Split to compare; default: the latest sweep's.")
CheckOption = typer.Option(
    False,
    "--check",
    help="Exit 1 when a reproduced number lies outside the experiment file's leaderboard.tolerance of its "
    "published one.",
)
BootstrapOption = typer.Option(2000, "--bootstrap", min=100, help="Bootstrap resamples for the 95% intervals.")
HtmlOption = typer.Option(True, "--html/--no-html", help="Also write leaderboard.html with the plots.")
FullOption = typer.Option(
    False, "--full", help="Print every column as Markdown, with the notes (default: the compact table)."
)
LatexColumnsOption = typer.Option(
    None,
    "--latex-columns",
    help="Comma-separated column keys (as in the CSV) of the paper-sized <table>.tex after the model; default: "
    "the compact table's. <table>.full.tex holds every column.",
)


def _print_tables(*shown: RenderableType) -> None:
    """Print compact tables at the terminal's width, or at 120 columns when piped to a file or a CI
    log, where there is no screen to fit (rich would take 80)."""
    if console.is_terminal:
        console.print(*shown, sep="\n")
    else:
        Console(width=max(console.width, 120)).print(*shown, sep="\n")


def _check(tables: list, spec: LeaderboardSpec) -> None:
    """Print how many reproduced numbers lie within tolerance; exit 1 when any does not."""
    from harness.leaderboard import out_of_tolerance

    checked, failures = out_of_tolerance(tables, spec.tolerance_of)
    for line in failures:
        errors.print(f"out of tolerance: {line}", highlight=False, soft_wrap=True, markup=False)
    console.print(f"check: {checked - len(failures)} of {checked} reproduced numbers within tolerance")
    if failures:
        raise typer.Exit(1)


@app.command()
@user_errors
def leaderboard(
    experiment: Optional[str] = typer.Argument(None, help="Experiment YAML file, or the name of an MLflow experiment."),
    experiments: list[str] = ExperimentsOption,
    tables: list[str] = TablesOption,
    tracking_uri: Optional[str] = UriOption,
    output_dir: Optional[Path] = OutOption,
    split_hash: Optional[str] = SplitHashOption,
    check: bool = CheckOption,
    bootstrap: int = BootstrapOption,
    html: bool = HtmlOption,
    full: bool = FullOption,
    latex_columns: Optional[str] = LatexColumnsOption,
) -> None:
    """Rebuild the comparison tables from MLflow beside the published numbers; print them (compact,
    or every column with --full) and write results/<experiment>/{<table>.md,.tex,.full.tex,.csv,
    leaderboard.md, leaderboard.tex, leaderboard.html}, attached to the sweep's run."""
    from harness.leaderboard import LayoutOptions, build_leaderboard, write_leaderboard
    from harness.leaderboard.attach import attach_leaderboard, tag_registered_models
    from harness.leaderboard.render import terminal_table, to_markdown
    from harness.leaderboard.source import resolve_source

    source = resolve_source(experiment, experiments, tracking_uri=tracking_uri, output_dir=output_dir, tables=tables)
    options = LayoutOptions(n_boot=bootstrap)
    board = build_leaderboard(
        source.tracking_uri, list(source.names), tables=source.tables, split_hash=split_hash, options=options
    )
    results = source.results_dir
    columns = [key.strip() for key in latex_columns.split(",") if key.strip()] if latex_columns else None
    written = write_leaderboard(board, results, html=html, latex_columns=columns)
    attached = attach_leaderboard(source.tracking_uri, list(source.names), board.runs.split_hash, written, results)
    versions = tag_registered_models(source.tracking_uri, list(source.names), board.table)
    for table in board.tables:
        if full:
            console.print(to_markdown(table), highlight=False, soft_wrap=True, markup=False)
        else:
            _print_tables(*terminal_table(table, full_file=f"{table.name}.md", full_flag="harness leaderboard --full"))
    if not full:
        for note in board.runs.notes:
            console.print(f"note: {note}", highlight=False, markup=False)
    names = ", ".join(p.name for p in written if p.parent == results)
    console.print(f"written to {results}: {names}", highlight=False, soft_wrap=True)  # a path to copy: never cut
    if attached.runs:
        console.print(f"attached to sweep run(s) {', '.join(attached.runs)} as artifacts under leaderboard/")
    for name in attached.running:
        console.print(
            f"note: {name} is still running: these tables hold the runs that have ended so far, and nothing "
            "is attached to it; run harness leaderboard again when it ends",
            highlight=False,
        )
    if versions:
        console.print(f"each winner's row set as leaderboard.* tags of the registered {', '.join(versions)}")
    if check:
        _check(board.tables, source.spec)


@app.command()
@user_errors
def predict(
    model_uri: str = typer.Argument(
        ..., help="A served model: models:/<experiment>-<baseline>@winner or @ensemble, or a model's path."
    ),
    folder: Path = typer.Argument(..., help="Folder of images (searched recursively) at the size the model stores."),
    out: Optional[Path] = typer.Option(None, "--out", help="CSV file to write; default: printed."),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="Where models:/ resolves; default results/mlflow.db."
    ),
) -> None:
    """Predict every image in a folder with a registered model: a CSV of file, each class's
    probability and the predicted class."""
    from harness.atomic import write_atomically
    from harness.predict import predict_folder

    uri = tracking_uri or f"sqlite:///{DEFAULT_STORE.resolve()}"
    text = predict_folder(model_uri, folder, uri).to_csv(index=False)
    if out is None:
        sys.stdout.write(text)
        return
    write_atomically(out, text.encode())
    console.print(f"wrote {text.count(chr(10)) - 1} predictions to {out}", highlight=False)


@study_app.command("leakage")
@user_errors
def study_leakage(
    experiment: Path = typer.Argument(..., help="Experiment YAML file."),
    baselines: list[str] = typer.Option(
        [],
        "--baseline",
        "-b",
        help="A baseline or floor to study (repeatable); default: every floor and baseline of the experiment.",
    ),
    root: Optional[Path] = RootOption,
    tracking_uri: Optional[str] = UriOption,
    output_dir: Optional[Path] = OutOption,
    bootstrap: int = typer.Option(2000, "--bootstrap", min=100, help="Bootstrap resamples for the intervals."),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", min=1, help="Epoch budget of every baseline in both arms; default: search.max_epochs."
    ),
) -> None:
    """Cross-validate each baseline over protocol.folds patch-random and patient folds with the same
    recipe, budget and seed; write results/<experiment>/leakage.{md,tex,csv} and figures/leakage.png."""
    from harness.atomic import write_atomically
    from harness.leaderboard.leakage import leakage_plot, leakage_table
    from harness.leaderboard.render import terminal_table, to_latex, to_markdown
    from harness.study.leakage import run_leakage_study

    config = _load(experiment, root, tracking_uri, output_dir)

    def progress(name: str, protocol: str, fold: int, accuracy: float) -> None:
        console.print(f"{name:<14} {protocol:<13} fold {fold} test accuracy {accuracy:.3f}", highlight=False)

    def epoch_progress(name: str, protocol: str, fold: int, entry: EpochReport, budget: int) -> None:
        console.print(
            f"{name:<14} {protocol:<13} fold {fold} epoch {entry.epoch} of at most {budget}: val loss "
            f"{entry.val['loss']:.3f}, val accuracy {entry.val['accuracy']:.3f}",
            highlight=False,
            soft_wrap=True,
        )

    again = " ".join(["harness study leakage", str(experiment), *(f"--baseline {b}" for b in baselines)])
    with _interruptible(f"the study's runs ended KILLED; run it again with: {again}"):
        study = run_leakage_study(config, baselines or None, epochs=epochs, on_arm=progress, on_epoch=epoch_progress)
    table = leakage_table(
        config.resolved_tracking_uri(), config.name, study, n_boot=bootstrap, seed=config.protocol.seed
    )
    results = config.results_dir
    results.mkdir(parents=True, exist_ok=True)
    paper = to_latex(table, columns=table.compact_columns())
    for suffix, text in ((".md", to_markdown(table)), (".tex", paper), (".full.tex", to_latex(table))):
        write_atomically(results / f"leakage{suffix}", text.encode())
    table.frame().to_csv(results / "leakage.csv", index=False)
    plot = leakage_plot(table, results / "figures" / "leakage.png")
    _print_tables(*terminal_table(table, full_file="leakage.md"))
    console.print(
        f"written: {results / 'leakage.md'}, leakage.tex, leakage.full.tex, leakage.csv, {plot}; study run {study}"
    )


def main() -> None:
    """Entry point for `python -m harness`."""
    app(prog_name="harness")


if __name__ == "__main__":
    main()
