"""The tables of `harness leaderboard --table`: 001's Tables I-IV, the IDC and BreakHis comparisons,
and a summary for any experiment. Each harness row is followed by every published row of the same
model and dataset (results/reference/) and their difference; a dagger marks a published row whose
protocol is not the runs' (BASELINES.md §1.4-1.5). Published rows are never ranked: bold marks the
best harness row only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

import baselines
from harness import tracking
from harness.leaderboard.evidence import (
    ALPHA,
    TableEvidence,
    TestEvidence,
    format_p,
    gather_evidence,
    probabilities,
)
from harness.leaderboard.runs import BaselineRuns, RunSet
from harness.leaderboard.table import (
    EMPTY,
    Cell,
    Column,
    Comparison,
    ReportTable,
    Row,
    count,
    number,
    signed,
)
from harness.metrics import classification_metrics, grouped_accuracies, roc_auc
from harness.reference import load_reference
from harness.stats import mean_sd_se

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
}
REFERENCE_DATASETS = {"BACH-A": "bach", "IDC": "idc", "BreakHis": "breakhis"}
DAGGER = "†"
STATISTICS_NOTE = (
    "95% CI: percentile bootstrap over the test images, whole patients resampled where patients "
    "hold several images ({n_boot} resamples, seed {seed}). p: paired test against {reference} on the "
    "same test images, exact McNemar below 25 discordant pairs, else chi-square with continuity "
    "correction; AUC: DeLong for two classes, paired bootstrap for more. p Holm: adjusted with Holm's "
    "method over the family of a column ({tests} tests: every other model against the reference). "
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
    "on training batches before each evaluation."
)


@dataclass(frozen=True)
class LayoutOptions:
    """How many bootstrap resamples and their seed; `cache` keeps the evidence several tables share."""

    n_boot: int = 2000
    seed: int = 0
    cache: dict = field(default_factory=dict, compare=False, repr=False)


def _col(
    key: str, header: str, *, best: bool | None = None, metric: str | None = None, scale: float = 1.0, digits: int = 4
) -> Column:
    return Column(key, header, best, metric, scale, digits)


def _source_label(row: pd.Series) -> str:
    source = str(row["source"])
    seed = source.split("_", 1)[0] if source[:3].isdigit() else source
    table = str(row.get("table", ""))
    return f"{seed} Table {table}" if table and table not in ("NA", "text", "tutorial_output") else seed


def _published_value(text: str) -> Cell:
    """Return a published cell as printed (in the unit the table shows), with its number when it has one."""
    if text in ("NA", "", "nan"):
        return Cell("n/a")
    try:
        return Cell(text, float(text))
    except ValueError:
        return Cell(text)


def _protocol_text(runs: BaselineRuns) -> str:
    """Return the protocol a harness row shows: its split protocol, then (for a trained model) the
    training semantics and BatchNorm recalibration its trials logged."""
    if runs.floor:
        return runs.protocol
    if runs.semantics is None:
        semantics = PRE_SEMANTICS
    elif runs.semantics == "source" and runs.baseline in baselines.list_baselines():
        semantics = SEMANTICS[baselines.info(runs.baseline).framework]
    else:
        semantics = f"{runs.semantics} semantics"
    return ", ".join([runs.protocol, semantics, *(["BN recal."] if runs.bn_recalibration else [])])


def _main_row(runs: BaselineRuns, group: str, cells: dict[str, Cell]) -> Row:
    """Return the harness (or floor) row of `runs`, named `group`."""
    return Row(
        "floor" if runs.floor else "harness",
        group,
        {"model": Cell(group), "protocol": Cell(_protocol_text(runs)), **cells},
    )


def _group(
    table: ReportTable,
    runs: BaselineRuns,
    harness: dict[str, Cell],
    published: list[tuple[str, str, dict[str, Cell]]],
    *,
    group: str | None = None,
) -> None:
    """Append the harness (or floor) row of `runs`, then each published row with a difference row
    under it; a published row under another split protocol carries a dagger."""
    group, protocol = group or runs.label, runs.protocol
    table.rows.append(_main_row(runs, group, harness))
    for source, their_protocol, cells in published:
        differs = their_protocol != protocol
        table.rows.append(
            Row(
                "published",
                group,
                {
                    "model": Cell(f"published: {source}"),
                    "protocol": Cell(their_protocol + (f" {DAGGER}" if differs else "")),
                    **cells,
                },
            )
        )
        difference: dict[str, Cell] = {}
        for column in table.columns:
            mine, theirs = harness.get(column.key), cells.get(column.key)
            if column.metric is None or mine is None or theirs is None or mine.value is None or theirs.value is None:
                continue
            if math.isnan(mine.value):
                continue
            difference[column.key] = signed(mine.value - theirs.value, column.digits)
            table.comparisons.append(
                Comparison(
                    group,
                    column.metric,
                    column.header,
                    mine.value / column.scale,
                    theirs.value / column.scale,
                    source,
                    differs,
                )
            )
        if difference:
            table.rows.append(
                Row("difference", group, {"model": Cell("difference (harness - published)"), **difference})
            )


def _protocol_notes(table: ReportTable) -> None:
    shown = [r.cells["protocol"].text.removesuffix(f" {DAGGER}") for r in table.rows if "protocol" in r.cells]
    used = sorted({text.split(", ")[0] for text in shown})
    if any(r.cells.get("protocol", EMPTY).text.endswith(DAGGER) for r in table.rows):
        table.footnotes.append(
            f"{DAGGER} the published row was measured under another protocol than the harness rows: "
            "its numbers are shown for orientation, not as a like-for-like target."
        )
    table.footnotes += [f"Protocol `{p}`: {PROTOCOLS[p]}." for p in used if p in PROTOCOLS]
    _semantics_note(table)


def _semantics_note(table: ReportTable) -> None:
    """Explain the protocol options wherever a harness row (a trained model) shows them."""
    if any(row.kind == "harness" for row in table.rows):
        table.footnotes.append(SEMANTICS_NOTE)


FLOOR_NOTE = (
    "(floor): a trivial model on the same manifest, split and folds, never ranked: majority predicts "
    "the training prior; colour_forest is a random forest on 16x16 pixels and colour histograms."
)


def _closing_notes(table: ReportTable, runset: RunSet, dataset: str, *notes: str) -> None:
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


def _reference(name: str, runs: BaselineRuns) -> pd.DataFrame:
    """Return the published rows of table `name` for this baseline on its dataset."""
    frame = load_reference(name)
    same = frame.dataset.map(REFERENCE_DATASETS) == runs.dataset
    return frame[same & (frame.get("harness_baseline", pd.Series("", index=frame.index)) == runs.baseline)]


def _gpu_hours(runs: BaselineRuns) -> Cell:
    return number(runs.hours("gpu_share"), 3)


def _cost_cells(runs: BaselineRuns) -> dict[str, Cell]:
    return {
        "trials": count(len(runs.trials)),
        "gpu_hours": _gpu_hours(runs),
        "cpu_hours": number(runs.hours("cpu_share"), 3),
    }


COST_COLUMNS = [
    _col("trials", "trials"),
    _col("gpu_hours", "GPU-h", digits=3),
    _col("cpu_hours", "CPU core-h", digits=3),
]


def _ci(interval, scale: float = 1.0, digits: int = 4) -> Cell:
    if interval is None or math.isnan(interval.low):
        return Cell("-")
    return Cell(f"[{interval.low * scale:.{digits}f}, {interval.high * scale:.{digits}f}]")


def _ordered(rows: list[BaselineRuns]) -> list[BaselineRuns]:
    """Rows best first by the validation objective of their best trial (the test set plays no
    part), floors last."""

    def key(r: BaselineRuns) -> tuple[bool, float, str]:
        value = r.metric("objective")
        if math.isnan(value):
            return (r.floor, math.inf, r.label)
        return (r.floor, value if r.best is not None and r.best.objective_metric == "val_loss" else -value, r.label)

    return sorted(rows, key=key)


def _evidence(runset: RunSet, rows: list[BaselineRuns], model: str, options: LayoutOptions) -> TableEvidence:
    """Return the evidence of `rows` against the first non-floor row with test predictions (rows
    come best first by validation objective), computed once per run set, rows and model."""
    key = (id(runset), tuple(r.label for r in rows), model)
    if key not in options.cache:
        with_predictions = [r for r in rows if not r.floor and runset.test_predictions(r, model) is not None]
        reference = with_predictions[0].label if with_predictions else None
        options.cache[key] = gather_evidence(runset, rows, model, reference, n_boot=options.n_boot, seed=options.seed)
    return options.cache[key]


def _statistics_note(table: ReportTable, evidence: TableEvidence, options: LayoutOptions, what: str) -> None:
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


def _test_cells(evidence: TableEvidence, label: str, column: str) -> dict[str, Cell]:
    """Return a row's cells of tested column `column` (accuracy or auc): p against the reference,
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


def _test_columns(column: str, p_header: str) -> list[Column]:
    """Return the columns of tested column `column`: raw p, Holm-adjusted p, letters."""
    short = {"accuracy": "acc", "auc": "AUC"}[column]
    return [
        _col(f"p_{column}", p_header),
        _col(f"p_{column}_holm", f"p Holm ({short})"),
        _col(f"letters_{column}", f"letters ({short})"),
    ]


CALIBRATION_COLUMNS = [
    _col("test_ece", "ECE", best=False),
    _col("ece_ci", "ECE 95% CI"),
    _col("test_brier", "Brier", best=False),
    _col("brier_ci", "Brier 95% CI"),
]


def _calibration_cells(ev: TestEvidence | None) -> dict[str, Cell]:
    """Return a row's ECE and Brier score with their intervals."""
    if ev is None:
        return {key: Cell("-") for key in ("test_ece", "ece_ci", "test_brier", "brier_ci")}
    return {
        "test_ece": number(ev.ece.estimate),
        "ece_ci": _ci(ev.ece),
        "test_brier": number(ev.brier.estimate),
        "brier_ci": _ci(ev.brier),
    }


# --- summary ---------------------------------------------------------------------------------


def summary(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return the generic table of any experiment: the best trial per baseline, its folds and costs."""
    columns = [
        _col("model", "baseline"),
        _col("protocol", "protocol"),
        _col("val_accuracy", "val acc", best=True),
        _col("folds_val_accuracy", "val acc, folds (mean ± SD)"),
        _col("test_accuracy", "test acc", best=True),
        _col("test_accuracy_ci", "95% CI"),
        *_test_columns("accuracy", "p (McNemar)"),
        _col("test_auc", "test AUC", best=True),
        _col("test_auc_ci", "95% CI "),
        *_test_columns("auc", "p (AUC)"),
        *CALIBRATION_COLUMNS,
        _col("test_f1", "F1", best=True),
        _col("test_precision", "precision", best=True),
        _col("test_recall", "recall", best=True),
        _col("folds_mean_test_accuracy", "fold models test acc (mean)", best=True),
        _col("ensemble_test_accuracy", "fold ensemble test acc", best=True),
        _col("params", "#params (torch)"),
        _col("params_published_convention", "#params (published convention)"),
        _col("trials", "trials"),
        _col("stopped_early", "stopped early"),
        _col("failed", "failed"),
        _col("gpu_hours", "GPU-h", digits=3),
        _col("cpu_hours", "CPU core-h", digits=3),
        _col("best_run_id", "run"),
    ]
    table = ReportTable("summary", "best trial per baseline", columns)
    rows = _ordered(runset.baselines)
    evidence = _evidence(runset, rows, "best_trial", options)
    for runs in rows:
        ev = evidence.rows.get(runs.label)
        folds = runs.fold_metric("best_val_accuracy")
        convention = _published_convention(runs.baseline)
        cells = {
            "val_accuracy": number(runs.metric("best_val_accuracy")),
            "folds_val_accuracy": _mean_sd(folds),
            "test_accuracy": number(runs.metric("test_accuracy")),
            "test_accuracy_ci": _ci(ev.accuracy if ev else None),
            **_test_cells(evidence, runs.label, "accuracy"),
            "test_auc": number(runs.metric("test_auc")),
            "test_auc_ci": _ci(ev.auc if ev else None),
            **_test_cells(evidence, runs.label, "auc"),
            **_calibration_cells(ev),
            "test_f1": number(runs.metric("test_f1")),
            "test_precision": number(runs.metric("test_precision")),
            "test_recall": number(runs.metric("test_sensitivity")),
            "folds_mean_test_accuracy": number(runs.metric("folds_mean_test_accuracy")),
            "ensemble_test_accuracy": number(runs.metric("ensemble_test_accuracy")),
            "params": count(runs.metric("params_torch")),
            "params_published_convention": (
                Cell(f"{int(runs.metric(f'params_{convention}')):,} ({convention})")
                if convention and not math.isnan(runs.metric(f"params_{convention}"))
                else Cell("-")
            ),
            "stopped_early": count(int(runs.trials.stopped_by.isin(tracking.EARLY_STOPPERS).sum())),
            "failed": count(int((runs.trials.status == "FAILED").sum())),
            "best_run_id": Cell(runs.best.run_id if runs.best is not None else "-"),
            **_cost_cells(runs),
        }
        table.rows.append(_main_row(runs, runs.label, cells))
    table.footnotes.append(
        "Best trial per baseline by its objective on the validation fold; test metrics are that "
        "trial's best epoch. Fold columns: that configuration retrained on every fold, and the mean "
        "softmax of those fold models. GPU-h and CPU core-h: wall time of every trial and fold run "
        "times the GPU and CPU share Ray granted it."
    )
    _statistics_note(table, evidence, options, "the best trial's model")
    table.footnotes.append(CALIBRATION_NOTE)
    if any(r.floor for r in rows):
        table.footnotes.append(FLOOR_NOTE)
    _semantics_note(table)
    return table


def _published_convention(baseline: str) -> str | None:
    if baseline not in baselines.list_baselines():
        return None
    published = baselines.info(baseline).published
    return published.convention if published else None


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 4) -> Cell:
    if not values:
        return Cell("-")
    mean, sd, _ = mean_sd_se(np.asarray(values) * scale)
    spread = "" if math.isnan(sd) else f" ± {sd:.{digits}f}"
    return Cell(f"{mean:.{digits}f}{spread}", mean)


# --- 001 Table I ------------------------------------------------------------------------------


def gusa_table1(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return 001's Table I: validation accuracy (mean, SD and SE over folds), validation AUC, test
    accuracy of single fold models and of their ensemble, #params, beside 001's rows."""
    pct = dict(scale=100.0, digits=2)
    columns = [
        _col("model", "model"),
        _col("protocol", "protocol"),
        _col("val_accuracy", "val acc (%)", best=True, metric="val_accuracy", **pct),
        _col("val_sd", "SD"),
        _col("val_se", "SE"),
        _col("val_auc", "val AUC", best=True, metric="val_auc"),
        _col("test_single", "test single (%), mean ± SD"),
        _col("test_single_best", "test single (%), best fold on test ˢ", metric="test_accuracy_single", **pct),
        _col("test_ensemble", "test ensemble (%)", best=True, metric="test_accuracy_ensemble", **pct),
        _col("test_ensemble_ci", "95% CI"),
        *_test_columns("accuracy", "p (McNemar)"),
        _col("params", "#params", metric=None, digits=0),
        *COST_COLUMNS,
    ]
    table = ReportTable("gusa-table1", "001 Table I: BACH part A, validation folds and test", columns)
    ranked = _ordered(runset.baselines)
    evidence = _evidence(runset, ranked, "ensemble", options)
    order = {b: i for i, b in enumerate(load_reference("gusa_table1").harness_baseline)}
    rows = sorted(ranked, key=lambda r: order.get(r.baseline, len(order)))  # 001's row order
    for runs in rows:
        harness = _table1_cells(runset, runs, evidence)
        published = []
        for _, pub in _reference("gusa_table1", runs).iterrows():
            cells = {
                "val_accuracy": _published_value(pub.val_acc_mean_pct),
                "val_se": Cell(f"±{pub.val_acc_pm_pct} ‡"),
                "val_auc": _published_value(pub.val_auc_macro),
                "test_single_best": _published_value(pub.test_acc_single_pct),
                "test_ensemble": _published_value(pub.test_acc_ensemble_pct),
                "params": count(float(pub.params_published)),
            }
            published.append((_source_label(pub), pub.protocol, cells))
            if pub.param_convention_reproducing not in ("none", "NA"):
                key = "params_" + pub.param_convention_reproducing.replace("-", "_")
                harness["params"] = count(runs.metric(key))
                harness["params"] = replace(
                    harness["params"], text=f"{harness['params'].text} ({pub.param_convention_reproducing})"
                )
                cells["params"] = count(float(pub.params_published))
        _group(table, runs, harness, published)
        _params_difference(table, runs.label)
    table.footnotes += [
        "Validation accuracy: mean over the retrained fold models' best epochs (the search fold alone when the winner "
        "was not retrained); SD with ddof 1 and SE = SD/√k over folds. ‡ 001's ± reproduces no SD, and an SE with an "
        "inconsistent ddof for five of its eight rows: convention unknown, SE-like (BASELINES.md §3.1).",
        "Validation AUC: macro one-vs-rest AUC of the out-of-fold predictions pooled over folds "
        "(each image scored once).",
        "ˢ best fold model chosen on the test set: what 001 calls 'single model'; shown only to sit beside 001's "
        "column. Test ensemble: mean softmax of the fold models (001 eq. 10). The harness tests on its own hold-out, "
        "001 on BACH's hidden official test set.",
        "#params: in the counting convention that reproduces 001's number "
        "(BASELINES.md §5) where one does, else torch.",
    ]
    _statistics_note(table, evidence, options, "the fold ensemble's predictions")
    _closing_notes(table, runset, "bach")
    return table


def _table1_cells(runset: RunSet, runs: BaselineRuns, evidence: TableEvidence) -> dict[str, Cell]:
    ev = evidence.rows.get(runs.label)
    folds = runs.fold_metric("best_val_accuracy")
    values = folds or [runs.metric("best_val_accuracy")]
    mean, sd, se = mean_sd_se(np.asarray(values) * 100) if not math.isnan(values[0]) else (math.nan,) * 3
    pooled, _ = runset.pooled_val_predictions(runs)
    val_auc = (
        roc_auc(pooled.label.to_numpy(), probabilities(pooled)) if pooled is not None else runs.metric("best_val_auc")
    )
    single = runs.fold_metric("test_accuracy")
    return {
        "val_accuracy": number(mean / 100, 2, scale=100),
        "val_sd": number(sd, 2),
        "val_se": number(se, 2),
        "val_auc": number(val_auc),
        "test_single": _mean_sd(single, 100, 2),
        "test_single_best": number(max(single), 2, scale=100) if single else Cell("-"),
        "test_ensemble": number(runs.ensemble.test_accuracy, 2, scale=100) if runs.ensemble is not None else Cell("-"),
        "test_ensemble_ci": _ci(ev.accuracy, 100, 2) if ev else Cell("-"),
        **_test_cells(evidence, runs.label, "accuracy"),
        "params": count(runs.metric("params_torch")),
        **_cost_cells(runs),
    }


def _params_difference(table: ReportTable, group: str) -> None:
    """#params is not checked against a tolerance, but its difference is shown."""
    rows = [r for r in table.rows if r.group == group]
    harness = rows[0].cells.get("params")
    for published, following in zip(rows, rows[1:]):
        if published.kind == "published" and "params" in published.cells and harness and harness.value is not None:
            theirs = published.cells["params"].value
            if following.kind == "difference" and theirs is not None:
                following.cells["params"] = Cell(f"{int(harness.value - theirs):+,}", harness.value - theirs)


# --- 001 Table II -----------------------------------------------------------------------------


def gusa_table2(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return 001's Table II: mean IoU of the RoI/attention maps on the validation folds (τ = 0.5)."""
    columns = [
        _col("model", "model"),
        _col("protocol", "protocol"),
        _col("roi_source", "RoI masks"),
        _col("miou", "mIoU, native (mean)", best=True, metric="miou"),
        _col("miou_sd", "SD"),
        _col("miou_full", "mIoU, full resolution (mean)", best=True),
        _col("miou_full_sd", "SD "),
    ]
    table = ReportTable("gusa-table2", "001 Table II: RoI detection on the validation folds, mIoU at τ = 0.5", columns)
    for runs in _ordered(runset.baselines):
        native = runs.fold_metric("best_val_miou_native") or [runs.metric("best_val_miou_native")]
        full = runs.fold_metric("best_val_miou_full") or [runs.metric("best_val_miou_full")]
        if all(math.isnan(v) for v in native):
            continue
        harness = {
            "roi_source": Cell(runs.roi_source),
            **_mean_sd_pair("miou", native),
            **_mean_sd_pair("miou_full", full),
        }
        if runs.roi_source != "files":
            harness["roi_source"] = Cell(f"{runs.roi_source} ¶")
        published = (
            [
                (_source_label(p), p.protocol, {"miou": _published_value(p["mean"]), "miou_sd": Cell(f"±{p.pm}")})
                for _, p in _reference("gusa_table2_miou", runs).iterrows()
            ]
            if runs.roi_source == "files"
            else []
        )
        _group(table, runs, harness, published)
    table.footnotes.append(
        "mIoU: per-image IoU of the map binarised at 0.5 "
        "against the RoI mask, averaged over a fold's validation images, "
        "mean and SD over folds (BASELINES.md §4.3). Native: the mask area-averaged down to the map's grid; full: the "
        "map upsampled bilinearly to the mask. 001 does not say which resolution it scored."
    )
    if any(r.cells.get("roi_source", EMPTY).text.endswith("¶") for r in table.rows):
        table.footnotes.append(
            "¶ masks are not expert outlines (tissue fallback), so no published mIoU is placed beside them."
        )
    if not table.rows:
        table.footnotes.insert(
            0,
            "No run logged a localisation score: no baseline with RoI or attention maps was "
            "trained with RoI masks on this split.",
        )
    _closing_notes(table, runset, "bach")
    return table


def _mean_sd_pair(key: str, values: list[float]) -> dict[str, Cell]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {key: Cell("-"), f"{key}_sd": Cell("-")}
    mean, sd, _ = mean_sd_se(np.asarray(values))
    return {key: number(mean, 3), f"{key}_sd": number(sd, 3)}


# --- 001 Table III ----------------------------------------------------------------------------


def _pooled_validation(runset: RunSet) -> Iterator[tuple[BaselineRuns, pd.DataFrame, str, list[str]]]:
    """Yield, best first, each baseline with validation predictions: its pooled predictions, how
    they were pooled, and its class names in lower case."""
    for runs in _ordered(runset.baselines):
        pooled, how = runset.pooled_val_predictions(runs)
        if pooled is not None:
            yield runs, pooled, how, [n.lower() for n in runset.class_names(runs)]


def gusa_table3(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return 001's Table III: class-wise one-vs-rest AUC of the pooled out-of-fold predictions."""
    reference_columns = [c for c in load_reference("gusa_table3_class_auc").columns if c.startswith("auc_")]
    columns = [
        _col("model", "model"),
        _col("protocol", "protocol"),
        *(_col(c, c.removeprefix("auc_").capitalize(), best=True, metric="class_auc") for c in reference_columns),
        _col("macro", "macro mean", best=True, metric="val_auc"),
        _col("pooled", "predictions"),
    ]
    table = ReportTable("gusa-table3", "001 Table III: class-wise AUC on validation", columns)
    for runs, pooled, how, names in _pooled_validation(runset):
        probs, labels = probabilities(pooled), pooled.label.to_numpy()
        harness: dict[str, Cell] = {"pooled": Cell(how), "macro": number(roc_auc(labels, probs))}
        for column in reference_columns:
            name = column.removeprefix("auc_")
            if name in names:
                k = names.index(name)
                harness[column] = number(
                    roc_auc((labels == k).astype(int), np.stack([1 - probs[:, k], probs[:, k]], 1))
                )
        published = [
            (
                _source_label(p),
                p.protocol,
                {
                    **{c: _published_value(p[c]) for c in reference_columns},
                    "macro": Cell(f"{p.derived_macro_mean} (derived)", float(p.derived_macro_mean)),
                },
            )
            for _, p in _reference("gusa_table3_class_auc", runs).iterrows()
        ]
        _group(table, runs, harness, published)
    _closing_notes(
        table,
        runset,
        "bach",
        "One-vs-rest ROC AUC per class on the out-of-fold validation predictions pooled over the "
        "retrained folds (the search fold alone where the winner was not retrained). 001's macro "
        "means are derived from its class AUCs (BASELINES.md §3.1).",
    )
    return table


# --- 001 Table IV -----------------------------------------------------------------------------


def gusa_table4(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return 001's Table IV: row-normalised confusion matrices of the pooled validation predictions."""
    reference = load_reference("gusa_table4_confusion")
    predicted = [c for c in reference.columns if c.startswith("pred_")]
    columns = [
        _col("model", "model / true class"),
        _col("protocol", "protocol"),
        *(_col(c, "pred " + c.removeprefix("pred_").capitalize(), metric="confusion", digits=2) for c in predicted),
        _col("images", "images"),
    ]
    table = ReportTable("gusa-table4", "001 Table IV: confusion matrices on validation, rows normalised", columns)
    for runs, pooled, _, names in _pooled_validation(runset):
        matrix = pd.crosstab(pooled.label, pooled.pred).reindex(
            index=range(len(names)), columns=range(len(names)), fill_value=0
        )
        mine = _reference("gusa_table4_confusion", runs)
        for k, name in enumerate(names):
            total = int(matrix.loc[k].sum())
            harness = {"images": count(total)}
            for column in predicted:
                j = names.index(column.removeprefix("pred_")) if column.removeprefix("pred_") in names else None
                if j is not None and total:
                    harness[column] = number(matrix.loc[k, j] / total, 2)
            rows = mine[mine.true_class.str.lower() == name]
            published = [
                (f"{_source_label(p)} ({p.panel})", p.protocol, {c: _published_value(p[c]) for c in predicted})
                for _, p in rows.iterrows()
            ]
            _group(table, runs, harness, published, group=f"{runs.label}: {name}")
    _closing_notes(
        table,
        runset,
        "bach",
        "Rows: true class; columns: predicted class; each row sums to 1. Pooled out-of-fold "
        "validation predictions. 001's panels (b)-(d) are B+FA, B+FA+GuRoI and B+FA+GuSA.",
    )
    return table


# --- IDC --------------------------------------------------------------------------------------

IDC_METRICS = {
    "accuracy": "test_accuracy",
    "auc": "test_auc",
    "f1": "test_f1",
    "precision": "test_precision",
    "recall": "test_recall",
}


def _idc_published(runs: BaselineRuns) -> list[tuple[str, str, dict[str, Cell]]]:
    rows = []
    for _, p in _reference("karatayev2021_table3", runs).iterrows():
        rows.append((_source_label(p), p.protocol, {"test_accuracy": _published_value(p.test_accuracy)}))
    table4 = _reference("karatayev2021_table4", runs)
    if not table4.empty:
        positive, overall = table4[table4.row == "1"].iloc[0], table4[table4.row == "accuracy"].iloc[0]
        rows.append(
            (
                _source_label(positive),
                positive.protocol,
                {
                    "test_accuracy": _published_value(overall.f1),
                    **{f"test_{m}": _published_value(positive[m]) for m in ("precision", "recall", "f1")},
                },
            )
        )
    pis = _reference("pis_cancernet", runs)
    if not pis.empty:
        value = dict(zip(pis.metric, pis.value))
        rows.append(
            (
                _source_label(pis.iloc[0]),
                pis.protocol.iloc[0],
                {
                    "test_accuracy": _published_value(value["accuracy"]),
                    "test_precision": _published_value(value["precision_class1"]),
                    "test_recall": _published_value(value["recall_class1_labelled_specificity"]),
                    "test_f1": _published_value(value["f1_class1"]),
                },
            )
        )
    essex = _reference("essex2023_idc", runs)
    essex = essex[essex.split == "test"]
    if not essex.empty:
        rows += _readings(essex)
    return rows


def _readings(frame: pd.DataFrame) -> list[tuple[str, str, dict[str, Cell]]]:
    """Return one published row per reading of a source that states a metric more than once (003)."""
    names = {
        "accuracy": "test_accuracy",
        "auc": "test_auc",
        "f1": "test_f1",
        "sensitivity_idc": "test_recall",
        "precision_range_pct": "test_precision",
    }
    values = {names[m]: list(g.itertuples()) for m, g in frame.groupby("metric", sort=False) if m in names}
    readings = max(len(v) for v in values.values())
    rows = []
    for i in range(readings):
        cells, sections = {}, set()
        for key, entries in values.items():
            if i >= len(entries):
                continue  # stated once: it belongs to the first reading only
            entry = entries[i]
            # 003 gives precision only as a range of percentages ("88-90").
            cells[key] = Cell(f"{entry.value}%") if key == "test_precision" else _published_value(str(entry.value))
            if len(entries) > 1:
                sections.add(str(entry.section).replace(";", ", "))
        where = f" (§{'; '.join(sorted(sections))})" if sections else ""
        rows.append((_source_label(frame.iloc[0]) + where, frame.protocol.iloc[0], cells))
    return rows


def idc(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return the IDC comparison: accuracy, AUC, F1, precision and recall of each model on the
    patient-disjoint test set, beside 004, S-PIS and 003."""
    keyed = {
        "test_accuracy": _col("test_accuracy", "accuracy", best=True, metric="test_accuracy"),
        "test_auc": _col("test_auc", "AUC", best=True, metric="test_auc"),
        "test_f1": _col("test_f1", "F1", best=True, metric="test_f1"),
        "test_precision": _col("test_precision", "precision", best=True, metric="test_precision"),
        "test_recall": _col("test_recall", "recall (IDC)", best=True, metric="test_recall"),
    }
    columns = [
        _col("model", "model"),
        _col("protocol", "protocol"),
        _col("test_model", "test model"),
        keyed["test_accuracy"],
        _col("accuracy_ci", "95% CI"),
        *_test_columns("accuracy", "p (McNemar)"),
        keyed["test_auc"],
        _col("auc_ci", "95% CI "),
        *_test_columns("auc", "p (DeLong)"),
        *CALIBRATION_COLUMNS,
        keyed["test_f1"],
        keyed["test_precision"],
        keyed["test_recall"],
        *COST_COLUMNS,
    ]
    table = ReportTable("idc", "IDC: patient-disjoint test set", columns)
    rows = [r for r in _ordered(runset.baselines) if r.dataset == "idc"]
    tested = [r for r in rows if r.best is not None]
    model = "ensemble" if tested and all(r.ensemble is not None for r in tested) else "best_trial"
    evidence = _evidence(runset, rows, model, options)
    for runs in rows:
        ev = evidence.rows.get(runs.label)
        frame = runset.test_predictions(runs, model)
        metrics = _binary_metrics(frame) if frame is not None else {}
        harness = {
            "test_model": Cell("fold ensemble" if model == "ensemble" else "best trial"),
            **{key: number(metrics.get(key, math.nan)) for key in keyed},
            "accuracy_ci": _ci(ev.accuracy if ev else None),
            **_test_cells(evidence, runs.label, "accuracy"),
            "auc_ci": _ci(ev.auc if ev else None),
            **_test_cells(evidence, runs.label, "auc"),
            **_calibration_cells(ev),
            **_cost_cells(runs),
        }
        _group(table, runs, harness, _idc_published(runs))
    table.footnotes.append(
        "Class 1 (IDC) is positive: precision, recall and F1 are those of IDC (BASELINES.md §4.2). "
        "S-PIS labels class-1 recall 'specificity'; it sits in the recall column here. 004's "
        "precision/recall/F1 are its class-1 row of Table IV."
    )
    _statistics_note(
        table,
        evidence,
        options,
        "the " + ("fold ensemble's" if model == "ensemble" else "best trial's") + " predictions",
    )
    table.footnotes.append(CALIBRATION_NOTE)
    _closing_notes(table, runset, "idc")
    return table


def _binary_metrics(frame: pd.DataFrame) -> dict[str, float]:
    metrics = classification_metrics(frame.label.to_numpy(), probabilities(frame))
    return {f"test_{k}": v for k, v in metrics.items()} | {"test_recall": metrics["sensitivity"]}


# --- BreakHis ---------------------------------------------------------------------------------

MAGNIFICATIONS = (40, 100, 200, 400)


def breakhis(runset: RunSet, options: LayoutOptions) -> ReportTable:
    """Return image- and patient-level test accuracy per magnification, beside 000's (unpublished) rows."""
    columns = [_col("model", "model"), _col("protocol", "protocol")]
    for mag in MAGNIFICATIONS:
        columns += [
            _col(f"image_{mag}", f"{mag}x image", best=True, metric="test_accuracy"),
            _col(f"patient_{mag}", f"{mag}x patient", best=True, metric="patient_accuracy"),
        ]
    columns += [
        _col("image_all", "all image", best=True, metric="test_accuracy"),
        _col("patient_all", "all patient", best=True, metric="patient_accuracy"),
        *COST_COLUMNS,
    ]
    table = ReportTable("breakhis", "BreakHis: image- and patient-level test accuracy per magnification", columns)
    for runs in _ordered(runset.baselines):
        if runs.dataset != "breakhis":
            continue
        frame = runset.test_predictions(runs, "ensemble" if runs.ensemble is not None else "best_trial")
        if frame is None:
            continue
        grouped = grouped_accuracies(frame)
        harness = {
            "image_all": number(float((frame.label == frame.pred).mean())),
            "patient_all": number(grouped.get("patient_accuracy", math.nan)),
            **_cost_cells(runs),
        }
        for mag in MAGNIFICATIONS:
            harness[f"image_{mag}"] = number(grouped.get(f"accuracy_{mag}x", math.nan))
            harness[f"patient_{mag}"] = number(grouped.get(f"patient_accuracy_{mag}x", math.nan))
        published = []
        mine = _reference("amil_breakhis_bach", runs)
        if not mine.empty:
            cells = {
                f"image_{int(p.magnification)}": _published_value(p.value)
                for _, p in mine.iterrows()
                if str(p.magnification).isdigit()
            }
            published.append((_source_label(mine.iloc[0]), mine.protocol.iloc[0], cells))
        _group(table, runs, harness, published)
    _closing_notes(
        table,
        runset,
        "breakhis",
        "Patient accuracy: the mean over patients of each patient's image accuracy (Spanhol's "
        "patient recognition rate). Test model: the fold ensemble where the winner was retrained, "
        "else the best trial. 000 publishes no numbers in the seed (n/a).",
    )
    return table


LAYOUTS: dict[str, Callable[[RunSet, LayoutOptions], ReportTable]] = {
    "summary": summary,
    "gusa-table1": gusa_table1,
    "gusa-table2": gusa_table2,
    "gusa-table3": gusa_table3,
    "gusa-table4": gusa_table4,
    "idc": idc,
    "breakhis": breakhis,
}


def build_table(name: str, runset: RunSet, options: LayoutOptions | None = None) -> ReportTable:
    """Return layout `name` of `runset`, with the run set's notes as the last footnotes."""
    table = LAYOUTS[name](runset, options or LayoutOptions())
    table.footnotes += runset.notes
    return table
