"""Leaderboard: MLflow runs -> one row per baseline, as Markdown and CSV.

It reads the tracking store only, never files a sweep wrote on the side, and compares only runs
that saw the same split (equal `split_hash` tag); runs of another split are reported, not mixed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

import baselines
from harness import tracking
from harness.errors import InputError
from harness.metrics import ranking_key

COLUMNS = {
    "baseline": "baseline",
    "val_accuracy": "val acc",
    "test_accuracy": "test acc",
    "test_auc": "test AUC",
    "test_f1": "test F1",
    "test_precision": "test precision",
    "test_recall": "test recall",
    "folds_mean_test_accuracy": "fold models test acc (mean)",
    "ensemble_test_accuracy": "fold ensemble test acc",
    "params": "#params (torch)",
    "params_published_convention": "#params (published convention)",
    "trials": "trials",
    "stopped_early": "stopped early",
    "failed": "failed",
    "wall_time_s": "trial wall time (s)",
}


@dataclass
class Leaderboard:
    """The table, the split it covers, and what was left out of it."""

    experiment: str
    split_hash: str
    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """Return one row per trial run of `experiment`: ids, status, tags, final metrics and duration."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise InputError(f"experiment {experiment!r} has no runs in {tracking_uri} (run `harness sweep` first)")
    rows = []
    for run in _all_runs(client, found.experiment_id, f"tags.{tracking.RUN_TYPE} = 'trial'"):
        info, tags = run.info, run.data.tags
        end = info.end_time or info.start_time
        rows.append({
            "run_id": info.run_id,
            "status": info.status,
            "start_time": info.start_time,
            "baseline": tags.get(tracking.BASELINE),
            "split_hash": tags.get(tracking.SPLIT_HASH),
            "objective_metric": tags.get(tracking.OBJECTIVE, "val_accuracy"),
            "stopped_by": tags.get(tracking.STOPPED_BY),
            "trial_id": tags.get(tracking.TRIAL_ID, info.run_id),
            "wall_time_s": (end - info.start_time) / 1000,
            **run.data.metrics,
        })
    return pd.DataFrame(rows)


def latest_split_hash(tracking_uri: str, experiment: str) -> str:
    """Return the split hash of the most recent sweep of `experiment`."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    sweeps = [] if found is None else client.search_runs(
        [found.experiment_id], f"tags.{tracking.RUN_TYPE} = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not sweeps:
        raise InputError(f"experiment {experiment!r} has no sweep in {tracking_uri} (run `harness sweep` first)")
    return sweeps[0].data.tags[tracking.SPLIT_HASH]


def _best_trial(runs: pd.DataFrame) -> pd.Series | None:
    """Return the trial with the best objective among those that reached a test evaluation."""
    tested = runs[runs.get("test_accuracy", pd.Series(index=runs.index, dtype=float)).notna()]
    if tested.empty:
        return None
    minimise = tested.objective_metric.iloc[0] == "val_loss"
    best = min(tested.index, key=lambda i: ranking_key(
        tested.objective[i], tested.best_val_loss[i], tested.trial_id[i], minimise=minimise))
    return tested.loc[best]


def _row(baseline: str, runs: pd.DataFrame) -> dict[str, object]:
    best = _best_trial(runs)

    def metric(name: str) -> float:
        return float(best[name]) if best is not None and name in best and not pd.isna(best[name]) else math.nan

    published = baselines.info(baseline).published if baseline in baselines.list_baselines() else None
    convention = published.convention if published else None
    return {
        "baseline": baseline,
        "val_accuracy": metric("best_val_accuracy"),
        "test_accuracy": metric("test_accuracy"),
        "test_auc": metric("test_auc"),
        "test_f1": metric("test_f1"),
        "test_precision": metric("test_precision"),
        "test_recall": metric("test_sensitivity"),
        "folds_mean_test_accuracy": metric("folds_mean_test_accuracy"),
        "ensemble_test_accuracy": metric("ensemble_test_accuracy"),
        "params": int(best["params_torch"]) if best is not None else None,
        "params_published_convention": (
            f"{int(best[f'params_{convention}']):,} ({convention})" if best is not None and convention else None
        ),
        "trials": len(runs),
        "stopped_early": int((runs.stopped_by == "asha").sum()),
        "failed": int((runs.status == "FAILED").sum()),
        "wall_time_s": round(float(runs.wall_time_s.sum()), 1),
        "best_run_id": best["run_id"] if best is not None else None,
    }


def build_leaderboard(tracking_uri: str, experiment: str, *, split_hash: str | None = None) -> Leaderboard:
    """Return the leaderboard of `experiment` for one split (default: that of its latest sweep)."""
    split_hash = split_hash or latest_split_hash(tracking_uri, experiment)
    runs = trial_runs(tracking_uri, experiment)
    notes = []
    if runs.empty:
        raise InputError(f"experiment {experiment!r} has no trial runs in {tracking_uri}")
    other = runs[runs.split_hash != split_hash]
    if not other.empty:
        hashes = ", ".join(sorted(h[:12] for h in other.split_hash.dropna().unique()))
        notes.append(f"excluded {len(other)} runs made on another split ({hashes}); only split {split_hash[:12]} is compared")
    runs = runs[runs.split_hash == split_hash]
    if runs.empty:
        raise InputError(f"experiment {experiment!r} has no trial runs on split {split_hash[:12]}")
    rows = [_row(name, group) for name, group in runs.groupby("baseline", sort=True)]
    table = pd.DataFrame(rows).sort_values("val_accuracy", ascending=False, na_position="last").reset_index(drop=True)
    for row in rows:
        if row["best_run_id"] is None:
            notes.append(f"{row['baseline']}: no trial reached a test evaluation (all stopped early or failed)")
    return Leaderboard(experiment=experiment, split_hash=split_hash, table=table, notes=notes)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) <= 1 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def to_markdown(board: Leaderboard) -> str:
    """Return the leaderboard as a Markdown table with its split and notes."""
    header = "| " + " | ".join(COLUMNS.values()) + " |"
    rule = "|" + "|".join("---" if k == "baseline" else "---:" for k in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(row[k]) for k in COLUMNS) + " |" for row in board.table.to_dict("records")]
    lines = [f"## {board.experiment}", "", f"Split `{board.split_hash[:16]}` (patient-grouped; val = search fold, test = held-out patients).", "", header, rule, *body]
    lines += ["", "Best trial per baseline by its objective on the validation fold; test metrics are that trial's best epoch. "
              "Fold columns: that configuration retrained on every fold, and the mean softmax of those fold models."]
    lines += [f"- {note}" for note in board.notes]
    return "\n".join(lines) + "\n"


# Columns where higher is better, bolded in LaTeX; counts and costs are not contests.
BEST_IS_HIGH = ("val_accuracy", "test_accuracy", "test_auc", "test_f1", "test_precision", "test_recall",
                "folds_mean_test_accuracy", "ensemble_test_accuracy")
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(board: Leaderboard) -> str:
    """Return the leaderboard as a booktabs LaTeX table, the best value of each metric in bold."""
    rows = board.table.to_dict("records")
    best = {k: max((r[k] for r in rows if isinstance(r[k], float) and not math.isnan(r[k])), default=None)
            for k in BEST_IS_HIGH}

    def cell(key: str, value: object) -> str:
        text = _latex_escape(_cell(value))
        return f"\\textbf{{{text}}}" if key in best and best[key] is not None and value == best[key] else text

    align = "l" + "r" * (len(COLUMNS) - 1)
    lines = [
        "\\begin{table}[t]", "\\centering",
        f"\\caption{{{_latex_escape(board.experiment)}: split \\texttt{{{board.split_hash[:12]}}}, best trial per "
        "baseline by its validation objective; best value per column in bold.}",
        f"\\begin{{tabular}}{{{align}}}", "\\toprule",
        " & ".join(_latex_escape(c) for c in COLUMNS.values()) + " \\\\", "\\midrule",
        *(" & ".join(cell(k, r[k]) for k in COLUMNS) + " \\\\" for r in rows),
        "\\bottomrule", "\\end{tabular}", "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def write_leaderboard(board: Leaderboard, results_dir: Path) -> tuple[Path, Path, Path]:
    """Write leaderboard.md, leaderboard.csv and leaderboard.tex into `results_dir`; returns the paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    md, csv, tex = results_dir / "leaderboard.md", results_dir / "leaderboard.csv", results_dir / "leaderboard.tex"
    md.write_text(to_markdown(board))
    board.table.assign(split_hash=board.split_hash).to_csv(csv, index=False)
    tex.write_text(to_latex(board))
    return md, csv, tex
