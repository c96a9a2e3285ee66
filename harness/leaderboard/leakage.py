"""The leakage study's table and plot, read back from MLflow: for each model, mean test accuracy
over the folds of the patch-random arm and of the patient arm, and the inflation between them, the
mean over folds of the per-fold difference, with a fold-paired bootstrap interval. A model that
predicts one class in every arm-fold learned nothing to leak: its row says so instead of an inflation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from harness import tracking
from harness.figures import pyplot
from harness.leaderboard import collapse, stats
from harness.leaderboard.evidence import patient_groups, probabilities
from harness.leaderboard.runs import RunSet
from harness.leaderboard.table import Cell, Column, ReportTable, Row, count, number, signed

ONE_CLASS_NOTE = (
    f"Predicts one class: one class takes at least {collapse.ONE_CLASS_SHARE:.0%} of an arm-fold's test "
    "predictions while that fold's labels give it less. Its accuracy there is about that class's share of the "
    "fold, so a difference between the arms measures how the folds' class balance differs, not leakage; "
    "the CSV keeps the numbers."
)


# The terminal's and a paper's table: both arms' accuracy, the inflation with its interval, and how
# many arm-folds predicted one class (per-fold differences and shared patients are in the full table).
COMPACT = (
    "model",
    "accuracy_patch_random",
    "accuracy_patient",
    "inflation_accuracy",
    "inflation_accuracy_low",
    "inflation_accuracy_high",
    "inflation_auc",
    "one_class",
)


def _columns(folds: int) -> list[Column]:
    return [
        Column("model", "model"),
        Column("accuracy_patch_random", "acc, patch-random"),
        Column("accuracy_patient", "acc, patient"),
        Column("inflation_accuracy", "inflation (points)", digits=1),
        Column("inflation_accuracy_low", "95% CI low", digits=1),
        Column("inflation_accuracy_high", "95% CI high", digits=1),
        Column("inflation_accuracy_sd", "SD over folds", digits=1),
        Column("inflation_auc", "AUC inflation (points)", digits=1),
        Column("inflation_auc_low", "AUC 95% CI low", digits=1),
        Column("inflation_auc_high", "AUC 95% CI high", digits=1),
        Column("folds", "folds"),
        Column("epochs", "epochs"),
        Column("one_class", "arm-folds predicting one class"),
        *(Column(f"inflation_fold{f}", f"fold {f}", digits=1) for f in range(folds)),
        Column("shared", "test patients in training, patch-random (per fold)", digits=1),
    ]


def _pairs(client: MlflowClient, experiment_id: str, study: str) -> dict[str, dict[int, dict[str, Run]]]:
    """Return the study's arm runs as model -> fold -> protocol -> run."""
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{tracking.PARENT}` = '{study}' and tags.{tracking.RUN_TYPE} = "
        f"'{tracking.RunType.STUDY_ARM}' and attributes.status = 'FINISHED'",
    )
    by_model: dict[str, dict[int, dict[str, Run]]] = {}
    for run in runs:
        folds = by_model.setdefault(run.data.tags[tracking.BASELINE], {})
        folds.setdefault(int(run.data.tags[tracking.FOLD]), {})[run.data.tags[tracking.PROTOCOL]] = run
    return by_model


def _sample(frame: pd.DataFrame | None) -> stats.Sample:
    assert frame is not None, "a finished arm run logs its test predictions"
    return frame.label.to_numpy(), probabilities(frame), patient_groups(frame)


def _samples(runs: RunSet, arms: dict[str, Run]) -> tuple[stats.Sample, stats.Sample]:
    """Return the (labels, probabilities, patient ids) of one fold's test predictions, patch-random
    arm first."""
    frames = [runs.predictions(arms[p].info.run_id, "test") for p in (tracking.PATCH_RANDOM, tracking.PATIENT)]
    return _sample(frames[0]), _sample(frames[1])


def _row(
    model: str, folds: dict[int, dict[str, Run]], runs: RunSet, n_boot: int, seed: int
) -> tuple[Row, str, str | None]:
    """Return one model's row from its fold pairs finished in both arms, the interval's method, and
    the line calling out its one-class arm-folds (None where it has none, or is a floor)."""
    paired = sorted(f for f, arms in folds.items() if set(arms) == {tracking.PATCH_RANDOM, tracking.PATIENT})
    samples = [_samples(runs, folds[f]) for f in paired]
    per_fold, acc = stats.fold_paired_difference(stats.accuracy, samples, n_boot=n_boot, seed=seed)
    _, auc = stats.fold_paired_difference(stats.auc, samples, n_boot=n_boot, seed=seed)
    mean = {
        p: float(np.mean([stats.accuracy(*pair[i][:2]) for pair in samples]))
        for i, p in enumerate((tracking.PATCH_RANDOM, tracking.PATIENT))
    }
    leaky = [folds[f][tracking.PATCH_RANDOM] for f in paired]
    epochs = {r.data.params["epochs"] for f in paired for r in folds[f].values() if "epochs" in r.data.params}
    floor = leaky[0].data.tags.get(tracking.FLOOR) == "true"
    cells = {
        "model": Cell(model + (" (floor)" if floor else "")),
        "accuracy_patch_random": number(mean[tracking.PATCH_RANDOM]),
        "accuracy_patient": number(mean[tracking.PATIENT]),
        "folds": count(len(paired)),
        "epochs": Cell(", ".join(sorted(epochs)) or "-"),
        "shared": number(float(np.mean([int(r.data.tags["shared_test_patients"]) for r in leaky])), 1),
    }
    for key, interval in (("accuracy", acc), ("auc", auc)):
        cells |= {
            f"inflation_{key}": signed(100 * interval.estimate, 1),
            f"inflation_{key}_low": signed(100 * interval.low, 1),
            f"inflation_{key}_high": signed(100 * interval.high, 1),
        }
    cells |= {f"inflation_fold{f}": signed(100 * d, 1) for f, d in zip(paired, per_fold)}
    cells["inflation_accuracy_sd"] = number(100 * stats.mean_sd_se(np.asarray(per_fold))[1], 1)
    one_class = _one_class_arms(runs, folds, paired)
    cells["one_class"] = Cell(f"{len(one_class)} of {2 * len(paired)}", len(one_class))
    row = Row("floor" if floor else "harness", model, cells)
    if not floor and len(one_class) == 2 * len(paired):
        _not_a_finding(row)
    return row, acc.method, None if floor else _one_class_lead(model, one_class, 2 * len(paired))


def _one_class_arms(runs: RunSet, folds: dict[int, dict[str, Run]], paired: list[int]) -> dict[str, collapse.OneClass]:
    """Return, by 'arm fold f', the arm-folds whose test predictions are almost all one class."""
    found = {}
    for fold in paired:
        for protocol, run in sorted(folds[fold].items()):
            frame = runs.predictions(run.info.run_id, "test")
            one = collapse.one_class(frame, runs.run_class_names(run.info.run_id)) if frame is not None else None
            if one is not None:
                found[f"{protocol} fold {fold}"] = one
    return found


def _not_a_finding(row: Row) -> None:
    """Show a one-class model's inflation cells as not applicable (the CSV keeps the numbers)."""
    row.collapsed = True
    for key, cell in row.cells.items():
        if key.startswith("inflation_"):
            text = "n/a: one class" if key in ("inflation_accuracy", "inflation_auc") else "-"
            row.cells[key] = Cell(text, cell.value)


def _one_class_lead(model: str, found: dict[str, collapse.OneClass], arm_folds: int) -> str | None:
    """Return the line that calls out a model predicting one class in some or all of its arm-folds."""
    if not found:
        return None
    classes = ", ".join(sorted({one.name for one in found.values()}))
    least = min(one.share for one in found.values())
    if len(found) == arm_folds:
        return (
            f"{model} predicts one class ({classes}) in all {arm_folds} arm-folds, for at least {least:.1%} of "
            "each held-out fold's images: its accuracies restate each fold's class balance, and the "
            "difference between the arms is not leakage; no inflation is reported"
        )
    return (
        f"{model} predicts one class ({classes}, at least {least:.1%} of the images) in {len(found)} of "
        f"{arm_folds} arm-folds ({', '.join(found)}): those folds restate the class balance, not what leaked"
    )


def _floors_first(item: tuple[str, dict[int, dict[str, Run]]]) -> tuple[bool, str]:
    runs = [r for arms in item[1].values() for r in arms.values()]
    return (runs[0].data.tags.get(tracking.FLOOR) != "true", item[0])


def leakage_table(tracking_uri: str, experiment: str, study: str, *, n_boot: int = 2000, seed: int = 0) -> ReportTable:
    """Return the study's table: one row per model with both arms' mean accuracy over folds, the
    inflation with its fold-paired interval, the folds and epochs, and each fold's difference."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"the study {study} ran in experiment {experiment!r}"
    experiment_id = found.experiment_id
    params = client.get_run(study).data.params
    folds, epochs = int(params["folds"]), params["epochs"]
    table = ReportTable(
        "leakage",
        f"the same model, recipe and seed over {folds} folds of a patch-random and of a "
        f"patient split, epoch budget {epochs}",
        _columns(folds),
        compact=COMPACT,
    )
    runs = RunSet(tracking_uri=tracking_uri, experiments=[experiment], split_hash="", baselines=[])
    method = None
    for model, by_fold in sorted(_pairs(client, experiment_id, study).items(), key=_floors_first):
        missing = [f for f in range(folds) if set(by_fold.get(f, {})) != {tracking.PATCH_RANDOM, tracking.PATIENT}]
        if len(missing) == folds:
            table.footnotes.append(f"{model}: no fold finished in both arms; no inflation")
            continue
        if missing:
            table.footnotes.append(
                f"{model}: folds {', '.join(map(str, missing))} did not finish in both arms and are "
                "left out of its mean"
            )
        row, method, lead = _row(model, by_fold, runs, n_boot, seed)
        table.rows.append(row)
        table.leads += [lead] if lead else []
    if method is not None:
        table.footnotes.append(
            f"Inflation = mean over folds of patch-random minus patient test accuracy, in points; "
            f"fold f = each arm's held-out fold f. 95% CI: {method}. The interval covers which "
            "test patients were drawn, given each fold's trained models; the SD over folds also "
            "holds what training on different folds changes."
        )
    table.footnotes.append(
        "Per fold and arm: the published recipe, the same epoch budget and seed, trained on the arm's other folds but "
        "one (the next fold validates), tested on its own held-out fold; the folds of each arm cover every image once. "
        "Patient folds keep every patient on one side; patch-random folds (the seeds' protocol, BASELINES.md §1.4) do "
        "not. Arms are tagged protocol=patch_random / patient and never enter a leaderboard table."
    )
    if table.leads:
        table.footnotes.append(ONE_CLASS_NOTE)
    return table


def leakage_plot(table: ReportTable, path: Path) -> Path:
    """Write a plot of each model's per-fold inflation (points) and their mean with its 95%
    interval, leaving out the models that predict one class in every arm-fold; returns the file."""
    plt = pyplot()
    rows = [r for r in table.rows if not r.collapsed]  # a model predicting one class has no inflation to show
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2.5, 3.8), dpi=110)
    ax.axhline(0, color="0.6", lw=0.8)
    if not rows:
        ax.text(0.5, 0.5, "every model predicted one class in every arm-fold", ha="center", transform=ax.transAxes)
    for i, row in enumerate(rows):
        folds = [c.value for k, c in row.cells.items() if k.startswith("inflation_fold") and c.value is not None]
        ax.scatter(
            i - 0.12 + np.linspace(-0.06, 0.06, len(folds)),
            folds,
            s=14,
            color="0.45",
            label="one fold" if i == 0 else None,
            zorder=2,
        )
        mean, low, high = (
            row.cells[k].value for k in ("inflation_accuracy", "inflation_accuracy_low", "inflation_accuracy_high")
        )
        assert mean is not None and low is not None and high is not None, f"{row.group}: no inflation interval"
        ax.errorbar(
            i + 0.12,
            mean,
            yerr=[[mean - low], [high - mean]],
            fmt="D",
            color="C0",
            capsize=4,
            ms=6,
            label="mean, 95% CI" if i == 0 else None,
            zorder=3,
        )
    ax.set_xticks(np.arange(len(rows)), [r.cells["model"].text for r in rows], fontsize=8)
    ax.set_ylabel("patch-random minus patient\ntest accuracy (points)")
    if rows:
        ax.legend(fontsize=8, loc="best")
    ax.set_title("Leakage: " + table.title.removeprefix("the same model, recipe and seed "), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
