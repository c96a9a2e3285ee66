"""The MLflow UI opened on the latest sweep's trials: a saved view of the experiment.

MLflow 3.17's runs page keeps only its search (filter, sort) in the URL; the columns, the charts
and which runs the charts show live in its view state, which it saves as an experiment tag
`mlflow.sharedViewState.<id>` (its "Save view" button) and opens from `?viewStateShareKey=<id>`.
The harness writes one such view per experiment, "trials of the latest sweep", through the public
client: its trials alone, best objective first, with the outcome, the objective and the searched
parameters as the first columns, every trial in the charts (MLflow charts only the first 10 runs
otherwise), and one parallel-coordinates chart per baseline coloured by the objective.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

from mlflow.entities import Run

from harness import tracking

VIEW_ID = "harness-latest-sweep"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"  # the prefix is MLflow UI's, the id ours
VIEW_NAME = "trials of the latest sweep"
OBJECTIVE = "objective"  # the metric every training run logs (harness.experiment.epoch_metrics)
_SECTION = "harness-model-metrics"  # the UI's "Model metrics" chart section, ours by id
# Reordered: the UI keeps the parallel-coordinates cards ahead of the per-metric charts it adds.
_SECTION_STATE = {
    "uuid": _SECTION,
    "name": "Model metrics",
    "display": True,
    "isReordered": True,
    "deleted": False,
    "isGenerated": True,
}


def column(kind: str, name: str) -> str:
    """Return the runs table's key of a column: kind is metrics, params, tags or attributes."""
    return f"{kind}.`{name}`"


def trials_filter(sweep_run_id: str) -> str:
    """Return the runs-table search that shows the trials of one sweep alone."""
    return tracking.children_filter(sweep_run_id, tracking.RunType.TRIAL)


def searched_params(trials: list[Run]) -> dict[str, list[str]]:
    """Return, per baseline (in the order their first trials started), the parameters whose values
    differ among its trials: what its search sampled, sorted by name."""
    values: dict[str, dict[str, set[str]]] = {}
    for run in sorted(trials, key=lambda r: r.info.start_time):
        seen = values.setdefault(run.data.tags.get(tracking.BASELINE, "?"), {})
        for key, value in run.data.params.items():
            seen.setdefault(key, set()).add(value)
    return {b: sorted(k for k, v in seen.items() if len(v) > 1) for b, seen in values.items()}


def _parallel_chart(baseline: str, params: list[str]) -> dict:
    """Return the chart-view card of a baseline's searched parameters against the objective,
    which colours the lines (MLflow colours a parallel-coordinates chart by its last metric)."""
    return {
        "uuid": f"harness-parallel-{baseline}",
        "type": "PARALLEL",  # the UI titles it "Parallel Coordinates", whatever its name
        "runsCountToCompare": 100,
        "metricSectionId": _SECTION,
        "deleted": False,
        "isGenerated": False,
        "selectedParams": params,
        "selectedMetrics": [OBJECTIVE],
        "showAllRuns": True,
    }


def view_state(sweep_run_id: str, greater_is_better: bool, searched: dict[str, list[str]]) -> dict:
    """Return the runs page's search and view state (MLflow's names) that shows one sweep's trials."""
    params = list(dict.fromkeys(p for names in searched.values() for p in names))
    columns = [column("tags", tracking.OUTCOME), column("metrics", OBJECTIVE), *(column("params", p) for p in params)]
    return {
        "searchFilter": trials_filter(sweep_run_id),
        "orderByKey": column("metrics", OBJECTIVE),
        "orderByAsc": not greater_is_better,
        "selectedColumns": columns,
        # Without an order the table groups columns by kind, which puts the outcome last.
        "columnOrder": columns,
        "columnWidths": {column("tags", tracking.OUTCOME): 130},
        "runsHiddenMode": "SHOW_ALL",
        "compareRunSections": [_SECTION_STATE],
        "compareRunCharts": [_parallel_chart(b, p) for b, p in searched.items() if p],
    }


def latest_sweep(tracker: tracking.Tracker, experiment_id: str) -> Run | None:
    """Return the newest sweep run of an experiment, None when it has none."""
    return tracker.newest_sweep([experiment_id])


def newest_sweep_experiment(tracker: tracking.Tracker) -> str | None:
    """Return the id of the experiment that holds the store's newest sweep run, None when none does."""
    sweep = tracker.newest_sweep([e.experiment_id for e in tracker.client.search_experiments()])
    return sweep.info.experiment_id if sweep else None


def write_latest_sweep_view(tracker: tracking.Tracker, experiment_id: str) -> bool:
    """Save (or replace) the experiment's view of its latest sweep's trials; returns False when the
    experiment has no sweep, and writes nothing then."""
    sweep = latest_sweep(tracker, experiment_id)
    if sweep is None:
        return False
    trials = tracker.child_runs(experiment_id, sweep.info.run_id, tracking.RunType.TRIAL)
    experiment = tracker.client.get_experiment(experiment_id)
    greater = experiment.tags.get(tracking.PRIMARY_GREATER_IS_BETTER, "true") == "true"
    state = view_state(sweep.info.run_id, greater, searched_params(trials))
    now = int(time.time() * 1000)
    envelope = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    tracker.client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))
    return True


def view_url(base: str, experiment_id: str, *, charts: bool = False) -> str:
    """Return the UI address of the experiment's latest-sweep view on the server at `base`, in the
    table (or the chart view)."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return f"{base.rstrip('/')}/#/experiments/{quote(experiment_id)}/runs?viewStateShareKey={VIEW_ID}{mode}"
