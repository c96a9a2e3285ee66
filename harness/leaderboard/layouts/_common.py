"""What every layout shares: the options, column and cell helpers, the harness-then-published row
groups with their differences, best-first row order, the evidence cache, and the footnotes on
protocols, floors, statistics and calibration."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import baselines
from harness.leaderboard import collapse
from harness.leaderboard.evidence import ALPHA, TableEvidence, TestEvidence, format_p, gather_evidence
from harness.leaderboard.reference import load_reference
from harness.leaderboard.runs import BaselineRuns, RunSet
from harness.leaderboard.stats import Interval, mean_sd_se
from harness.leaderboard.table import EMPTY, Cell, Column, Comparison, ReportTable, Row, count, number, signed

# What each protocol tag means, for the footnotes (BASELINES.md §1.4, §1.5).
PROTOCOLS = {
    "patient": "harness: patient-grouped stratified k-fold CV after a patient-disjoint test hold-out (§1.5)",
    "gusa_4fold": "001: image-level 4-fold CV on BACH-A; test = the hidden official 100 images, "
    "'single' = the best fold model chosen on that test set",
    "karatayev2021": "004: patch split in glob order, test = validation, test positives inside the training set",
    "karatayev2021_imbalanced": "004: ~80/10/10 random patch split, test evaluated every epoch",
    "pis_patch_split": "S-PIS: random patch-level split (patients cross it)",
    "essex2023": "003: undersampled, random stratified 80/10/10 patch split",
    "spanhol_fold1": "000: Spanhol fold 1 (patient-disjoint), test monitored every epoch, no validation set",
    "eva": "eva's fixed split (kaiko-ai/eva): test = eva's validation part (BACH: 132 of the 400 images by "
    "its index ranges; BreakHis: the 40X images of TA, MC, F and DC of its 14 validation slides), the "
    "harness's folds inside eva's training part; eva's published rows are the mean of 5 runs of one "
    "fixed head recipe",
}
REFERENCE_DATASETS = {"BACH-A": "bach", "IDC": "idc", "BreakHis": "breakhis"}
DAGGER = "†"
STATISTICS_NOTE = (
    "95% CI: percentile bootstrap over the test images, whole patients resampled where patients "
    "hold several images ({n_boot} resamples, seed {seed}). p: paired test against {reference} on the "
    "same test images, exact McNemar below 25 discordant pairs, else chi-square with continuity "
    "correction; balanced accuracy: paired bootstrap; AUC: DeLong for two classes, paired bootstrap for "
    "more. p Holm: adjusted with Holm's method over the family of a column ({tests} tests: every other "
    "model against the reference). "
    "Letters: compact letter display (Piepho 2004) from the same tests between every pair of models "
    "({pairs} pairs), Holm-adjusted over those pairs; models sharing a letter are not distinguishable "
    "at {alpha}, 'a' marks the group of the highest value. The letters' family is larger than the "
    "p Holm column's, so a model can differ from the reference there and still share its letter."
)
CALIBRATION_NOTE = (
    "ECE: expected calibration error of the top-class confidence (the predicted class's probability), "
    "15 equal-width bins. Brier: mean squared distance of the probabilities from the one-hot label, as "
    "scikit-learn's brier_score_loss (binary: the mean of (p(class 1) - label)²; more classes: the sum "
    "over classes). Both lower is better, with the same bootstrap interval."
)
SEMANTICS = {"keras": "Keras semantics", "tensorflow": "TensorFlow semantics", "pytorch": "torch semantics"}
PRE_SEMANTICS = "torch (pre-semantics)"
SEMANTICS_NOTE = (
    "Protocol options of the harness rows (`training.semantics`, `training.bn_recalibration`): Keras or "
    "TensorFlow semantics, the defaults of the framework the source ran (BASELINES.md §0.5); torch "
    f"semantics, PyTorch's; {PRE_SEMANTICS}, a run logged before the option existed, which trained with "
    "PyTorch's defaults, the only ones the harness had then. BN recal.: BatchNorm statistics recomputed "
    "on training batches before each evaluation. Folds retrained N ep.: the fold retrain capped at N "
    "epochs (`search.retrain_epochs`), below the trials' budget."
)
FLOOR_NOTE = (
    "(floor): a trivial model on the same manifest, split and folds, never ranked: majority predicts "
    "the training prior; colour_forest is a random forest on 16x16 pixels and colour histograms."
)

# A published row as a layout hands it to `add_group`: its source label, its protocol, its cells.
Published = tuple[str, str, dict[str, Cell]]


@dataclass(frozen=True)
class LayoutOptions:
    """How many bootstrap resamples and their seed; `cache` keeps the evidence several tables share."""

    n_boot: int = 2000
    seed: int = 0
    cache: dict = field(default_factory=dict, compare=False, repr=False)


def col(
    key: str, header: str, *, best: bool | None = None, metric: str | None = None, scale: float = 1.0, digits: int = 4
) -> Column:
    """Return a column; `best` says whether a higher value wins, `metric` what `--check` compares in it."""
    return Column(key, header, best, metric, scale, digits)


def source_label(row: pd.Series) -> str:
    """Return how a published row names its source: the seed, and its table where it has one."""
    source = str(row["source"])
    seed = source.split("_", 1)[0] if source[:3].isdigit() else source
    table = str(row.get("table", ""))
    return f"{seed} Table {table}" if table and table not in ("NA", "text", "tutorial_output") else seed


def published_value(text: str) -> Cell:
    """Return a published cell as printed (in the unit the table shows), with its number when it has one."""
    if text in ("NA", "", "nan"):
        return Cell("n/a")
    try:
        return Cell(text, float(text))
    except ValueError:
        return Cell(text)


def published_rows(name: str, runs: BaselineRuns) -> pd.DataFrame:
    """Return the published rows of table `name` for this baseline on its dataset."""
    frame = load_reference(name)
    same = frame.dataset.map(REFERENCE_DATASETS) == runs.dataset
    return frame[same & (frame.get("harness_baseline", pd.Series("", index=frame.index)) == runs.baseline)]


def _protocol_text(runs: BaselineRuns) -> str:
    """Return the protocol a harness row shows: its split protocol, then (for a trained model) the
    training semantics and BatchNorm recalibration its trials logged, and a shorter fold retrain."""
    if runs.floor:
        return runs.protocol
    if runs.semantics is None:
        semantics = PRE_SEMANTICS
    elif runs.semantics == "source" and runs.baseline in baselines.list_baselines():
        semantics = SEMANTICS[baselines.info(runs.baseline).framework]
    else:
        semantics = f"{runs.semantics} semantics"
    options = ["BN recal."] if runs.bn_recalibration else []
    if runs.short_retrain is not None:
        options.append(f"folds retrained {runs.short_retrain} ep.")
    return ", ".join([runs.protocol, semantics, *options])


def main_row(runs: BaselineRuns, group: str, cells: dict[str, Cell]) -> Row:
    """Return the harness (or floor) row of `runs`, named `group`."""
    return Row(
        "floor" if runs.floor else "harness",
        group,
        {"model": Cell(group), "protocol": Cell(_protocol_text(runs)), **cells},
    )


def add_group(
    table: ReportTable,
    runs: BaselineRuns,
    harness: dict[str, Cell],
    published: list[Published],
    *,
    group: str | None = None,
) -> None:
    """Append the harness (or floor) row of `runs`, then each published row with a difference row
    under it; a published row under another split protocol carries a dagger."""
    group = group or runs.label
    table.rows.append(main_row(runs, group, harness))
    for source, their_protocol, cells in published:
        differs = their_protocol != runs.protocol
        shown = Cell(their_protocol + (f" {DAGGER}" if differs else ""))
        table.rows.append(Row("published", group, {"model": Cell(f"published: {source}"), "protocol": shown, **cells}))
        difference = _differences(table, group, harness, cells, source=source, differs=differs)
        if difference:
            table.rows.append(
                Row("difference", group, {"model": Cell("difference (harness - published)"), **difference})
            )


def _differences(
    table: ReportTable, group: str, harness: dict[str, Cell], cells: dict[str, Cell], *, source: str, differs: bool
) -> dict[str, Cell]:
    """Return the difference cells of a harness row against the published `cells`, and record each
    metric's pair in the table's comparisons."""
    difference: dict[str, Cell] = {}
    for column in table.columns:
        mine, theirs = harness.get(column.key), cells.get(column.key)
        if column.metric is None or mine is None or theirs is None or mine.value is None or theirs.value is None:
            continue
        if math.isnan(mine.value):
            continue
        difference[column.key] = signed(mine.value - theirs.value, column.digits)
        reproduced, their_value = mine.value / column.scale, theirs.value / column.scale
        table.comparisons.append(
            Comparison(group, column.metric, column.header, reproduced, their_value, source, differs)
        )
    return difference


def _protocol_notes(table: ReportTable) -> None:
    """Append the dagger's note where a published row carries one, and the meaning of every protocol shown."""
    shown = [r.cells["protocol"].text.removesuffix(f" {DAGGER}") for r in table.rows if "protocol" in r.cells]
    used = sorted({text.split(", ")[0] for text in shown})
    if any(r.cells.get("protocol", EMPTY).text.endswith(DAGGER) for r in table.rows):
        table.footnotes.append(
            f"{DAGGER} the published row was measured under another protocol than the harness rows: "
            "its numbers are shown for orientation, not as a like-for-like target."
        )
    table.footnotes += [f"Protocol `{p}`: {PROTOCOLS[p]}." for p in used if p in PROTOCOLS]
    semantics_note(table)


def semantics_note(table: ReportTable) -> None:
    """Explain the protocol options wherever a harness row (a trained model) shows them."""
    if any(row.kind == "harness" for row in table.rows):
        table.footnotes.append(SEMANTICS_NOTE)


def closing_notes(table: ReportTable, runset: RunSet, dataset: str, *notes: str) -> None:
    """Append `notes`, then the notes on floors, on every protocol in the table and on datasets
    without published rows."""
    table.footnotes += notes
    if any(r.kind == "floor" for r in table.rows):
        table.footnotes.append(FLOOR_NOTE)
    _protocol_notes(table)
    others = sorted({r.dataset for r in runset.baselines} - {dataset})
    if others:
        table.footnotes.append(
            f"This table compares runs on {dataset}; those on {', '.join(others)} have no "
            "published row beside them" + (" and are left out." if dataset != "bach" else ".")
        )


def _gpu_hours(runs: BaselineRuns) -> Cell:
    return number(runs.hours("gpu_share"), 3)


def cost_cells(runs: BaselineRuns) -> dict[str, Cell]:
    """Return a row's cost cells: its number of trials, its GPU hours and CPU core hours."""
    return {
        "trials": count(len(runs.trials)),
        "gpu_hours": _gpu_hours(runs),
        "cpu_hours": number(runs.hours("cpu_share"), 3),
    }


COST_COLUMNS = [
    col("trials", "trials"),
    col("gpu_hours", "GPU-h", digits=3),
    col("cpu_hours", "CPU core-h", digits=3),
]


def ci_cell(interval: Interval | None, scale: float = 1.0, digits: int = 4) -> Cell:
    """Return an interval as '[low, high]', '-' where there is none."""
    if interval is None or math.isnan(interval.low):
        return Cell("-")
    return Cell(f"[{interval.low * scale:.{digits}f}, {interval.high * scale:.{digits}f}]")


def mean_sd_cell(values: list[float], scale: float = 1.0, digits: int = 4) -> Cell:
    """Return 'mean ± SD' of `values` (the mean alone for one value), '-' for none."""
    if not values:
        return Cell("-")
    mean, sd, _ = mean_sd_se(np.asarray(values) * scale)
    spread = "" if math.isnan(sd) else f" ± {sd:.{digits}f}"
    return Cell(f"{mean:.{digits}f}{spread}", mean)


def ordered(rows: list[BaselineRuns]) -> list[BaselineRuns]:
    """Return the rows best first by the validation objective of their best trial (the test set
    plays no part), floors last."""

    def key(r: BaselineRuns) -> tuple[bool, float, str]:
        value = r.metric("objective")
        if math.isnan(value):
            return (r.floor, math.inf, r.label)
        return (r.floor, value if r.best is not None and r.best.objective_metric == "val_loss" else -value, r.label)

    return sorted(rows, key=key)


def flag_one_class(table: ReportTable, runset: RunSet, model: str | Callable[[BaselineRuns], str]) -> None:
    """Mark each model row whose test predictions (of `model`: ensemble or best_trial, or a
    function of the row's runs returning one) are almost all one class, call it out above the
    table, and explain the rule in the footnotes."""
    by_label = {r.label: r for r in runset.baselines}
    for row in table.rows:
        runs = by_label.get(row.group)
        if row.kind != "harness" or runs is None:
            continue
        frame = runset.test_predictions(runs, model if isinstance(model, str) else model(runs))
        found = collapse.one_class(frame, runset.class_names(runs)) if frame is not None else None
        if found is not None:
            row.collapsed = True
            table.leads.append(collapse.callout(row.group, found))
    if any(row.collapsed for row in table.rows):
        table.footnotes.append(collapse.NOTE)


def table_evidence(runset: RunSet, rows: list[BaselineRuns], model: str, options: LayoutOptions) -> TableEvidence:
    """Return the evidence of `rows` against the first non-floor row with test predictions (rows
    come best first by validation objective), computed once per run set, rows and model."""
    key = (id(runset), tuple(r.label for r in rows), model)
    if key not in options.cache:
        with_predictions = [r for r in rows if not r.floor and runset.test_predictions(r, model) is not None]
        reference = with_predictions[0].label if with_predictions else None
        options.cache[key] = gather_evidence(runset, rows, model, reference, n_boot=options.n_boot, seed=options.seed)
    return options.cache[key]


def statistics_note(table: ReportTable, evidence: TableEvidence, options: LayoutOptions, what: str) -> None:
    """Append how the intervals, p-values and letters of `what` were computed, where anything was tested."""
    if evidence.reference is None:
        return
    tests = next(iter(evidence.tests.values()))
    table.footnotes.append(
        f"Test statistics on {what}. "
        + STATISTICS_NOTE.format(
            n_boot=options.n_boot,
            seed=options.seed,
            reference=f"`{evidence.reference}` (best validation objective, chosen without the test set)",
            tests=len(tests.vs_reference),
            pairs=tests.pairs,
            alpha=ALPHA,
        )
    )
    if evidence.other_images:
        table.footnotes.append(
            f"Not tested (scored other test images than the reference): {', '.join(evidence.other_images)}."
        )


def tested_cells(evidence: TableEvidence, label: str, column: str) -> dict[str, Cell]:
    """Return a row's cells of tested column `column` (accuracy, balanced_accuracy or auc): p against the reference,
    its Holm-adjusted p, and the letters ('-' where untested)."""
    tests = evidence.tests.get(column)
    if tests is None:
        return {f"p_{column}": Cell("-"), f"p_{column}_holm": Cell("-"), f"letters_{column}": Cell("-")}
    test = tests.vs_reference.get(label)
    p, adjusted = (test.p_value, tests.adjusted[label]) if test is not None else (math.nan, math.nan)
    return {
        f"p_{column}": _p_cell(p),
        f"p_{column}_holm": _p_cell(adjusted),
        f"letters_{column}": Cell(tests.letters.get(label, "-")),
    }


def _p_cell(p: float) -> Cell:
    return Cell(format_p(p), None if math.isnan(p) else p)


def tested_columns(column: str, p_header: str) -> list[Column]:
    """Return the columns of tested column `column`: raw p, Holm-adjusted p, letters."""
    short = {"accuracy": "acc", "balanced_accuracy": "bal. acc", "auc": "AUC"}[column]
    return [
        col(f"p_{column}", p_header),
        col(f"p_{column}_holm", f"p Holm ({short})"),
        col(f"letters_{column}", f"letters ({short})"),
    ]


CALIBRATION_COLUMNS = [
    col("test_ece", "ECE", best=False),
    col("ece_ci", "ECE 95% CI"),
    col("test_brier", "Brier", best=False),
    col("brier_ci", "Brier 95% CI"),
]


def calibration_cells(ev: TestEvidence | None) -> dict[str, Cell]:
    """Return a row's ECE and Brier score with their intervals."""
    if ev is None:
        return {key: Cell("-") for key in ("test_ece", "ece_ci", "test_brier", "brier_ci")}
    return {
        "test_ece": number(ev.ece.estimate),
        "ece_ci": ci_cell(ev.ece),
        "test_brier": number(ev.brier.estimate),
        "brier_ci": ci_cell(ev.brier),
    }
