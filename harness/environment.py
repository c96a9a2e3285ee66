"""Environment variables the harness sets for a scope only, never left set by an import
(harness/data/_albumentations.py makes albumentations' import such a scope).

`environment(values)` sets variables for a `with` block and afterwards puts back what was there.
A variable the user set keeps its value (as `os.environ.setdefault` would) unless the block asks
to override it. This module imports neither MLflow nor Ray: the CLI enters MLFLOW_QUIET before
either is imported, since MLflow reads MLFLOW_DISABLE_TELEMETRY when it is imported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

MLFLOW_QUIET = {
    # MLflow prints a "View run ... at: URL" line whenever a run ends against a server: once per
    # trial, fold and floor of a sweep. The sweep prints where to look once.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # MLflow 3 sends usage telemetry over the network unless told not to; the harness runs offline.
    "MLFLOW_DISABLE_TELEMETRY": "true",
}

ALBUMENTATIONS_OFFLINE = {
    # albumentations asks PyPI for its latest version when it is imported (up to 2 s, and a network
    # call from every trial's worker) unless told not to; the harness runs offline.
    "NO_ALBUMENTATIONS_UPDATE": "1",
}

MLFLOW_FAIL_FAST = {
    # MLflow's HTTP client retries a refused connection or a 5xx answer 7 times with exponential
    # backoff (about 4 minutes) and waits 120 s for an answer: a server gone was noticed after
    # minutes, in silence. The harness's tracker retries itself, up to HARNESS_TRACKING_OUTAGE_S of
    # continuous failure, so each request fails within seconds: one immediate retry, and 15 s for a
    # server that accepts a connection and never answers (a read timeout, not a transfer's whole
    # time, so a large artifact is not cut short).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}

NO_PICKLED_MODELS = {
    # MLflow unpickles a pickled model when it loads it, running whatever code the pickle names;
    # with this it refuses one, and checks a torch.export (pt2) archive for pickled payloads first.
    # The harness logs no pickled model; a user loading older ones opts in with true.
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
}

EMBEDDED_RAY = {
    # Ray reports usage to its makers unless told not to; opt in with 1.
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray starts its workers at nice 15, to keep its own services responsive; but here the workers
    # are the trials, the whole of the work. Beside any other busy process a niced trial gets a few
    # per cent of a core: a 1-minute sweep took 26 minutes next to two busy loops. Read by the
    # raylet a Ray started in the block spawns; a Ray that is joined keeps its own setting.
    "RAY_worker_niceness": "0",
}


# What the harness quiets unless `harness --verbose`: the libraries' notices on stderr that say
# nothing about the run (the harness prints its own line per trial, fold and epoch). Their warnings
# and errors still show.
QUIET_LIBRARIES = {
    # MLflow logs at INFO: "Creating initial MLflow database tables..." and its migrations when it
    # makes a store, "Validating input example against model signature" when it logs a model. Read
    # when MLflow is imported, by the CLI's process and the workers of a Ray it starts.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # Tune's console output prints a configuration table, the experiment folder and a TensorBoard
    # hint when a sweep starts, even at verbose=0; its legacy output prints nothing at verbose=0.
    "RAY_AIR_NEW_OUTPUT": "0",
}

QUIET_EMBEDDED_RAY = {
    # A Ray started by ray.init turns token authentication on unless told a mode, and warns that it
    # did; naming the mode it picks (token: the same cluster) leaves out the notice. Ray reads it
    # into its configuration when imported, so it is set before that or not at all; never for a
    # cluster the sweep joins, which has a mode of its own.
    "RAY_AUTH_MODE": "token",
}


@contextmanager
def environment(values: Mapping[str, str], *, override: bool = False) -> Iterator[None]:
    """Set `values` in os.environ for the block; a variable already set keeps its value unless
    `override`. Afterwards each variable the block changed is reset to its earlier value, or
    removed if it had none; yields nothing.

    Only what this block changed is put back, so two overlapping blocks setting the same value
    (two threads, say) cannot leave it set after both."""
    earlier: dict[str, str | None] = {}
    for name, value in values.items():
        current = os.environ.get(name)
        if current == value or (current is not None and not override):
            continue
        earlier[name] = current
        os.environ[name] = value
    try:
        yield
    finally:
        for name, before in earlier.items():
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before
