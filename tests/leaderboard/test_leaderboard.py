"""The leaderboard against an MLflow store whose runs, metrics and predictions are known.

The store is written through the harness's own tracking calls (Tracker.start_run, log_metrics,
log_evaluation), exactly as a sweep writes it, and every table cell is recomputed here directly.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_auc_score
from statsmodels.stats.multitest import multipletests
from typer.testing import CliRunner

from harness import tracking
from harness.cli import app
from harness.leaderboard import LayoutOptions, Leaderboard, build_leaderboard, write_leaderboard
from harness.leaderboard.reference import load_reference
from harness.leaderboard.render import to_html, to_latex
from harness.leaderboard.stats import compact_letters
from harness.localisation import map_ious
from harness.metrics import classification_metrics, confusion
from harness.train import Evaluation
from tests.conftest import write_experiment
from tools.screenshots import CHROMIUM_FLAGS

SPLIT = "a" * 64
BACH_CLASSES = ("Normal", "Benign", "InSitu", "Invasive")
IDC_CLASSES = ("non_idc", "idc")
N_BOOT = 300


def predictions(rng: np.random.Generator, labels: np.ndarray, patients: np.ndarray, skill: float) -> pd.DataFrame:
    """Return a predictions table whose probabilities lean towards the true class by `skill`."""
    classes = int(labels.max()) + 1
    logits = rng.normal(size=(len(labels), classes))
    logits[np.arange(len(labels)), labels] += skill
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    frame = pd.DataFrame(
        {"rel_path": [f"img{i:03d}.png" for i in range(len(labels))], "patient_id": patients, "label": labels}
    )
    return frame.assign(**{f"prob_{c}": probs[:, c] for c in range(classes)}, pred=probs.argmax(1))


def evaluation(frame: pd.DataFrame) -> Evaluation:
    probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
    labels = frame.label.to_numpy()
    return Evaluation(
        metrics=classification_metrics(labels, probs),
        confusion=confusion(labels, probs.argmax(1), probs.shape[1]),
        predictions=frame,
    )


@dataclass
class Store:
    uri: str
    experiment: str
    tracker: tracking.Tracker
    experiment_id: str
    tags: dict[str, str]
    # Write metrics under the names of stores made before the rename (best_val_*).
    legacy: bool = False

    def run(
        self,
        run_type: str,
        baseline: str,
        metrics: dict[str, float],
        *,
        parent: str | None = None,
        extra: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> str:
        run_id = self.tracker.start_run(
            self.experiment_id,
            name=f"{baseline}-{run_type}",
            run_type=tracking.RunType(run_type),
            parent=parent,
            params=params or {},
            tags={
                **self.tags,
                tracking.BASELINE: baseline,
                tracking.CPU_SHARE: "1",
                tracking.GPU_SHARE: "0.5",
                **(extra or {}),
            },
        )
        if self.legacy:
            metrics = {k.replace("sel_val_", "best_val_"): v for k, v in metrics.items()}
        self.tracker.log_metrics(run_id, metrics, step=1)
        return run_id


def open_store(
    tmp_path: Path, experiment: str, dataset: str, *, roi_source: str = "files", legacy: bool = False
) -> Store:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.Tracker(uri)
    tags = {
        tracking.DATASET: dataset,
        tracking.SPLIT_HASH: SPLIT,
        tracking.PROTOCOL: "patient",
        tracking.ROI_SOURCE: roi_source,
    }
    store = Store(uri, experiment, tracker, tracker.experiment_id(experiment), tags, legacy)
    sweep = store.run("sweep", "", {})
    tracker.finish(sweep, tracking.FINISHED)
    return store


@dataclass
class BachModel:
    trial_run: str
    fold_val_accuracy: list[float]
    fold_test: list[pd.DataFrame]
    val: list[pd.DataFrame]
    ensemble: pd.DataFrame
    params: dict[str, float]


def bach_store(tmp_path: Path, roi_source: str = "files", legacy: bool = False) -> tuple[Store, dict[str, BachModel]]:
    """Two of 001's models, each with a losing and a winning trial, 4 retrained folds and an ensemble."""
    store = open_store(tmp_path, "bach-lb", "bach", roi_source=roi_source, legacy=legacy)
    rng = np.random.default_rng(7)
    test_labels = np.repeat(np.arange(4), 10)
    models = {}
    for baseline, skill, folds_acc in (
        ("gusa_baseline", 1.0, [0.81, 0.86, 0.88, 0.93]),
        ("gusa_fa_gusa", 2.5, [0.86, 0.86, 0.88, 0.88]),
    ):
        params = (
            {"params_torch": 12_491_140.0, "params_keras": 12_649_540.0, "params_weights_only": 12_332_740.0}
            if baseline == "gusa_baseline"
            else {"params_torch": 6_802_565.0, "params_keras": 6_879_301.0, "params_weights_only": 6_725_829.0}
        )
        # gusa_baseline's counts are metrics, as stores written before they became tags hold them.
        legacy_counts = baseline == "gusa_baseline"
        metric_counts = params if legacy_counts else {}
        tag_counts = {} if legacy_counts else {k: str(int(v)) for k, v in params.items()}
        loser = store.run(
            "trial",
            baseline,
            {"objective": 0.2, "sel_val_loss": 2.0, "sel_val_accuracy": 0.2, "test_accuracy": 0.25, **metric_counts},
            extra={tracking.TRIAL_ID: f"{baseline}-0", **tag_counts},
        )
        store.tracker.finish(loser, tracking.FINISHED)
        winner_test = predictions(rng, test_labels, np.arange(40).astype(str), skill)
        winner = store.run(
            "trial",
            baseline,
            {
                "objective": 0.8,
                "sel_val_loss": 0.5,
                "sel_val_accuracy": 0.8,
                "test_accuracy": float((winner_test.pred == winner_test.label).mean()),
                **metric_counts,
            },
            extra={tracking.TRIAL_ID: f"{baseline}-1", **tag_counts},
        )
        store.tracker.log_evaluation(winner, "test", evaluation(winner_test), BACH_CLASSES)
        store.tracker.finish(winner, tracking.FINISHED)
        fold_test, vals = [], []
        for fold, accuracy in enumerate(folds_acc):
            val = predictions(rng, np.repeat(np.arange(4), 5), np.arange(fold * 20, fold * 20 + 20).astype(str), skill)
            val = val.assign(rel_path=[f"val{fold}_{i}.png" for i in range(20)])
            test = predictions(rng, test_labels, np.arange(40).astype(str), skill)
            run = store.run(
                "fold",
                baseline,
                {
                    "sel_val_accuracy": accuracy,
                    "test_accuracy": float((test.pred == test.label).mean()),
                    "sel_val_miou_native": 0.70 + fold / 100,
                    "sel_val_miou_full": 0.6,
                },
                parent=winner,
                extra={tracking.FOLD: str(fold)},
            )
            store.tracker.log_evaluation(run, "val", evaluation(val), BACH_CLASSES)
            store.tracker.log_evaluation(run, "test", evaluation(test), BACH_CLASSES)
            store.tracker.finish(run, tracking.FINISHED)
            fold_test.append(test)
            vals.append(val)
        mean = np.mean([t[[f"prob_{c}" for c in range(4)]].to_numpy() for t in fold_test], axis=0)
        ensemble = fold_test[0].assign(**{f"prob_{c}": mean[:, c] for c in range(4)}, pred=mean.argmax(1))
        run = store.run(
            "ensemble", baseline, {"test_accuracy": float((ensemble.pred == ensemble.label).mean())}, parent=winner
        )
        store.tracker.log_evaluation(run, "test", evaluation(ensemble), BACH_CLASSES)
        store.tracker.finish(run, tracking.FINISHED)
        models[baseline] = BachModel(winner, folds_acc, fold_test, vals, ensemble, params)
    return store, models


@pytest.fixture(scope="module")
def bach(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, BachModel]]:
    return bach_store(tmp_path_factory.mktemp("bach_store"))


def rows_of(frame: pd.DataFrame, group: str) -> pd.DataFrame:
    return frame[frame.group == group].set_index("row_kind")


def shown(table, group: str, kind: str) -> dict[str, str]:
    """Return the texts a table shows in the first row of `kind` of `group`."""
    row = next(r for r in table.rows if r.kind == kind and r.group == group)
    return {key: cell.text for key, cell in row.cells.items()}


def test_gusa_table1_every_cell_beside_001(bach: tuple[Store, dict[str, BachModel]]) -> None:
    store, models = bach
    board = build_leaderboard(store.uri, store.experiment, tables=["gusa-table1"], options=LayoutOptions(n_boot=N_BOOT))
    frame = board.tables[0].frame()
    published = load_reference("gusa_table1").set_index("harness_baseline")
    for baseline, model in models.items():
        rows = rows_of(frame, baseline)
        mine, theirs, diff = rows.loc["harness"], rows.loc["published"], rows.loc["difference"]
        folds = np.array(model.fold_val_accuracy) * 100
        assert mine.val_accuracy == pytest.approx(folds.mean())
        assert mine.val_sd == pytest.approx(folds.std(ddof=1), abs=0.005)
        assert mine.val_se == pytest.approx(folds.std(ddof=1) / 2, abs=0.005)
        pooled = pd.concat(model.val)
        expected_auc = roc_auc_score(pooled.label, pooled[[f"prob_{c}" for c in range(4)]], multi_class="ovr")
        assert mine.val_auc == pytest.approx(expected_auc, abs=5e-5)
        single = [float((t.pred == t.label).mean()) * 100 for t in model.fold_test]
        assert mine.test_single == pytest.approx(np.mean(single))
        assert (
            shown(board.tables[0], baseline, "harness")["test_single"]
            == f"{np.mean(single):.2f} ± {np.std(single, ddof=1):.2f}"
        )
        assert mine.test_single_best == pytest.approx(max(single))
        assert mine.test_ensemble == pytest.approx((model.ensemble.pred == model.ensemble.label).mean() * 100)
        # Published cells are 001's, as transcribed; the protocol differs, so the row carries a dagger.
        row = published.loc[baseline]
        assert theirs.val_accuracy == float(row.val_acc_mean_pct) and theirs.val_se == f"±{row.val_acc_pm_pct} ‡"
        assert theirs.test_ensemble == float(row.test_acc_ensemble_pct) and theirs.protocol == "gusa_4fold †"
        assert diff.val_accuracy == pytest.approx(round(mine.val_accuracy - float(row.val_acc_mean_pct), 2))
        assert diff.test_single_best == pytest.approx(round(mine.test_single_best - float(row.test_acc_single_pct), 2))
    # gusa_baseline's published count is reproduced in the weights-only convention (§5).
    table = board.tables[0]
    assert shown(table, "gusa_baseline", "harness")["params"] == "12,332,740 (weights-only)"
    assert shown(table, "gusa_baseline", "difference")["params"] == "+0"
    assert shown(table, "gusa_fa_gusa", "harness")["params"] == "6,802,565"
    assert any("SE-like" in note for note in board.tables[0].footnotes)


def test_ensemble_interval_and_mcnemar_against_direct_computation(bach: tuple[Store, dict[str, BachModel]]) -> None:
    store, models = bach
    board = build_leaderboard(
        store.uri, store.experiment, tables=["gusa-table1"], options=LayoutOptions(n_boot=N_BOOT, seed=3)
    )
    frame = board.tables[0].frame()
    # The reference of the paired tests is the best by validation objective; both tie at 0.8, so the
    # lower validation loss, then the label, decides: gusa_baseline comes first alphabetically.
    reference, other = models["gusa_baseline"].ensemble, models["gusa_fa_gusa"].ensemble
    right_ref, right_other = (reference.pred == reference.label).to_numpy(), (other.pred == other.label).to_numpy()
    b, c = int((right_other & ~right_ref).sum()), int((~right_other & right_ref).sum())
    expected = (
        stats.binomtest(b, b + c, 0.5).pvalue if b + c < 25 else stats.chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1)
    )
    assert rows_of(frame, "gusa_fa_gusa").loc["harness", "p_accuracy"] == pytest.approx(expected)
    assert shown(board.tables[0], "gusa_fa_gusa", "harness")["p_accuracy"] == (
        "<0.001" if expected < 0.001 else f"{expected:.3f}"
    )
    # One test in the family: Holm leaves it as it is.
    assert rows_of(frame, "gusa_fa_gusa").loc["harness", "p_accuracy_holm"] == pytest.approx(expected)
    # BACH has no patients: the bootstrap resamples images, drawn as the stats module documents.
    rng = np.random.default_rng(3)
    values = [right_other[rng.integers(0, 40, 40)].mean() * 100 for _ in range(N_BOOT)]
    low, high = np.percentile(values, [2.5, 97.5])
    assert rows_of(frame, "gusa_fa_gusa").loc["harness", "test_ensemble_ci"] == f"[{low:.2f}, {high:.2f}]"


def test_a_store_written_before_the_metric_rename_gives_the_same_tables(
    bach: tuple[Store, dict[str, BachModel]], tmp_path: Path
) -> None:
    """Stores made before the selected epoch's metrics became sel_val_* call them best_val_*."""
    legacy, _ = bach_store(tmp_path, legacy=True)
    written = MlflowClient(legacy.uri).search_runs([legacy.experiment_id])
    assert any("best_val_accuracy" in r.data.metrics for r in written)
    assert not any("sel_val_accuracy" in r.data.metrics for r in written)
    tables = ["gusa-table1", "gusa-table3", "summary"]
    options = LayoutOptions(n_boot=N_BOOT)
    old = build_leaderboard(legacy.uri, legacy.experiment, tables=tables, options=options)
    new = build_leaderboard(bach[0].uri, bach[0].experiment, tables=tables, options=options)
    for before, after in zip(old.tables, new.tables):
        # Run ids and wall-time hours differ between any two stores.
        specific = [c for c in after.frame().columns if "run" in c or c.endswith("_hours")]
        pd.testing.assert_frame_equal(before.frame().drop(columns=specific), after.frame().drop(columns=specific))


def test_gusa_tables_2_to_4(bach: tuple[Store, dict[str, BachModel]]) -> None:
    store, models = bach
    board = build_leaderboard(store.uri, store.experiment, tables=["gusa-table2", "gusa-table3", "gusa-table4"])
    miou, aucs, confusions = (t.frame() for t in board.tables)
    native = [0.70, 0.71, 0.72, 0.73]
    fa_gusa = rows_of(miou, "gusa_fa_gusa")
    assert fa_gusa.loc["harness", "miou"] == pytest.approx(np.mean(native), abs=5e-4)
    assert fa_gusa.loc["harness", "miou_sd"] == pytest.approx(np.std(native, ddof=1), abs=5e-4)
    assert fa_gusa.loc["published", "miou"] == 0.772
    assert "published" not in rows_of(miou, "gusa_baseline").index  # 001 scored no mIoU for the baseline
    for baseline, model in models.items():
        pooled = pd.concat(model.val)
        probs = pooled[[f"prob_{c}" for c in range(4)]].to_numpy()
        rows = rows_of(aucs, baseline)
        for k, name in enumerate(("normal", "benign", "insitu", "invasive")):
            assert rows.loc["harness", f"auc_{name}"] == pytest.approx(
                roc_auc_score(pooled.label == k, probs[:, k]), abs=5e-5
            )
        expected = pd.crosstab(pooled.label, pooled.pred, normalize="index").reindex(columns=range(4), fill_value=0)
        for k, name in enumerate(("normal", "benign", "insitu", "invasive")):
            row = rows_of(confusions, f"{baseline}: {name}").loc["harness"]
            got = [row[f"pred_{p}"] for p in ("normal", "benign", "insitu", "invasive")]
            assert got == pytest.approx(expected.loc[k].round(2).tolist(), abs=1e-9)
    published = rows_of(confusions, "gusa_fa_gusa: insitu").loc["published"]
    assert published.pred_insitu == 0.94  # 001 Table IV (d)


def test_tissue_masks_get_no_published_miou(tmp_path: Path) -> None:
    store, _ = bach_store(tmp_path, roi_source="tissue")
    table = build_leaderboard(store.uri, store.experiment, tables=["gusa-table2"]).tables[0]
    frame = table.frame()
    assert set(frame.row_kind) == {"harness"} and set(frame.roi_source) == {"tissue ¶"}


def test_latex_is_booktabs_with_one_harness_row_per_model_and_the_best_in_bold(bach) -> None:
    store, models = bach
    table = build_leaderboard(
        store.uri, store.experiment, tables=["gusa-table1"], options=LayoutOptions(n_boot=N_BOOT)
    ).tables[0]
    tex = to_latex(table)
    assert tex.count("{") == tex.count("}") and tex.count("\\begin{") == tex.count("\\end{")
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0].splitlines()
    rows = [line for line in body if line != "\\addlinespace"]
    assert all(line.endswith("\\\\") and line.count(" & ") == len(table.columns) - 1 for line in rows)
    harness_rows = [line for line in rows if not line.startswith("\\textit")]
    assert [line.split(" & ")[0] for line in harness_rows] == ["gusa\\_baseline", "gusa\\_fa\\_gusa"]
    frame = table.frame()
    mine = frame[frame.row_kind == "harness"]
    best = mine.test_ensemble.max()
    winner = mine[mine.test_ensemble == best].group.item()
    line = next(line for line in harness_rows if line.startswith(winner.replace("_", "\\_")))
    assert f"\\textbf{{{best:.2f}}}" in line.split(" & ")[8]
    assert "\\textbf" not in "".join(line for line in rows if line.startswith("\\textit"))


def idc_store(
    tmp_path: Path,
    *,
    seed: int = 11,
    second: str = "resnet18",
    models: tuple[tuple[str, float, float, dict[str, str]], ...] | None = None,
    patients: int = 12,
) -> tuple[Store, dict[str, pd.DataFrame]]:
    """CancerNet and ResNet-18 (or `second`), or `models` (baseline, skill, validation objective,
    params), on 5 IDC test patches each of `patients` patients; no fold retrain."""
    store = open_store(tmp_path, "idc-lb", "idc")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 5 * patients)
    groups = np.repeat([f"p{i:02d}" for i in range(patients)], 5)
    frames = {}
    for baseline, skill, objective, params in models or (("cancernet", 2.0, 0.9, {}), (second, 0.5, 0.7, {})):
        frame = predictions(rng, labels, groups, skill)
        metrics = classification_metrics(frame.label.to_numpy(), frame[["prob_0", "prob_1"]].to_numpy())
        run = store.run(
            "trial",
            baseline,
            {
                "objective": objective,
                "sel_val_loss": 0.4,
                "sel_val_accuracy": objective,
                "params_torch": 1e6,
                **{f"test_{k}": v for k, v in metrics.items()},
            },
            extra={tracking.TRIAL_ID: f"{baseline}-{objective}"},
            params=params,
        )
        store.tracker.log_evaluation(run, "test", evaluation(frame), IDC_CLASSES)
        store.tracker.finish(run, tracking.FINISHED)
        frames[baseline] = frame
    return store, frames


def test_summary_and_idc_statistics(tmp_path: Path) -> None:
    store, frames = idc_store(tmp_path)
    board = build_leaderboard(
        store.uri, store.experiment, tables=["summary", "idc"], options=LayoutOptions(n_boot=N_BOOT, seed=5)
    )
    summary, idc = (t.frame() for t in board.tables)
    assert list(summary.model) == ["cancernet", "resnet18"]  # best validation objective first
    reference, other = frames["cancernet"], frames["resnet18"]
    # Patients hold five patches each: whole patients are resampled, as the stats module documents.
    members = [np.flatnonzero(other.patient_id.to_numpy() == p) for p in sorted(other.patient_id.unique())]
    rng = np.random.default_rng(5)
    right = (other.pred == other.label).to_numpy()
    values = [right[np.concatenate([members[p] for p in rng.integers(0, 12, 12)])].mean() for _ in range(N_BOOT)]
    low, high = np.percentile(values, [2.5, 97.5])
    row = summary.set_index("model").loc["resnet18"]
    assert row.test_accuracy_ci == f"[{low:.4f}, {high:.4f}]"
    right_ref = (reference.pred == reference.label).to_numpy()
    b, c = int((right & ~right_ref).sum()), int((~right & right_ref).sum())
    expected = (
        stats.binomtest(b, b + c, 0.5).pvalue if b + c < 25 else stats.chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1)
    )
    assert row.p_accuracy == pytest.approx(expected)
    assert not pd.isna(row.p_auc) and pd.isna(summary.set_index("model").loc["cancernet", "p_accuracy"])
    assert row.trials == 1 and row.gpu_hours == pytest.approx(0.0, abs=1e-3)
    # The IDC table puts 004's and S-PIS's CancerNet beside ours, with the difference.
    cancernet = rows_of(idc, "cancernet")
    published = cancernet[cancernet.index == "published"]
    assert list(published.model) == ["published: 004 Table III", "published: S-PIS"]
    assert list(published.test_accuracy) == [0.86, 0.837]
    diffs = cancernet[cancernet.index == "difference"].test_accuracy.tolist()
    accuracy = cancernet.loc["harness"].test_accuracy
    assert diffs == pytest.approx([round(accuracy - 0.86, 4), round(accuracy - 0.837, 4)])
    assert set(published.protocol) == {"pis_patch_split †"}


def mcnemar_p(right_a: np.ndarray, right_b: np.ndarray) -> float:
    b, c = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    if b + c == 0:
        return 1.0
    return stats.binomtest(b, b + c, 0.5).pvalue if b + c < 25 else stats.chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1)


def ece_direct(labels: np.ndarray, p1: np.ndarray) -> float:
    """ECE of a binary model over 15 bins (lo, hi] of the predicted class's probability."""
    confidence, correct = np.maximum(p1, 1 - p1), (p1 > 0.5) == labels
    edges = np.linspace(0, 1, 16)
    inside = [(confidence > lo) & (confidence <= hi) for lo, hi in zip(edges[:-1], edges[1:])]
    return sum(i.mean() * abs(correct[i].mean() - confidence[i].mean()) for i in inside if i.any())


THREE_MODELS = (
    ("cancernet", 2.5, 0.9, {"semantics": "source", "bn_recalibration": "true"}),
    ("resnet18", 0.2, 0.8, {"semantics": "torch", "bn_recalibration": "false"}),
    ("idc_cnn", 2.0, 0.7, {}),
)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, pd.DataFrame]]:
    """Three IDC models on 150 patches of 30 patients: two skilled ones and a weak one."""
    return idc_store(tmp_path_factory.mktemp("three"), seed=2, models=THREE_MODELS, patients=30)


def test_holm_letters_and_calibration_against_direct_computation(three) -> None:
    store, frames = three
    board = build_leaderboard(
        store.uri, store.experiment, tables=["summary", "idc"], options=LayoutOptions(n_boot=N_BOOT, seed=4)
    )
    names = ["cancernet", "resnet18", "idc_cnn"]  # best validation objective first: cancernet is the reference
    right = {n: (frames[n].pred == frames[n].label).to_numpy() for n in names}
    raw = [mcnemar_p(right[n], right["cancernet"]) for n in names[1:]]
    # Every pair for the letters, Holm over the three pairs, then letters by accuracy, best first.
    pairs = [("resnet18", "cancernet"), ("idc_cnn", "cancernet"), ("resnet18", "idc_cnn")]
    adjusted_pairs = multipletests([mcnemar_p(right[a], right[b]) for a, b in pairs], method="holm")[1]
    different = [pair for pair, p in zip(pairs, adjusted_pairs) if p < 0.05]
    by_accuracy = sorted(names, key=lambda n: -right[n].mean())
    letters = compact_letters(by_accuracy, different)
    assert len(set(letters.values())) > 1  # the weak model stands apart: the case tests something
    for table in board.tables:
        frame = table.frame().query("row_kind == 'harness'").set_index("model")
        assert list(frame.index) == names
        assert frame.loc[names[1:], "p_accuracy"].tolist() == pytest.approx(raw)
        assert frame.loc[names[1:], "p_accuracy_holm"].tolist() == pytest.approx(multipletests(raw, method="holm")[1])
        auc_raw = frame.loc[names[1:], "p_auc"].tolist()
        assert frame.loc[names[1:], "p_auc_holm"].tolist() == pytest.approx(multipletests(auc_raw, method="holm")[1])
        assert pd.isna(frame.loc["cancernet", "p_accuracy_holm"]) and pd.isna(frame.loc["cancernet", "p_auc_holm"])
        assert frame.letters_accuracy.to_dict() == letters
        assert set("".join(frame.letters_auc)) <= set("abc") and frame.letters_auc.str.len().min() >= 1
        for n in names:
            labels, p1 = frames[n].label.to_numpy(), frames[n].prob_1.to_numpy()
            assert frame.loc[n, "test_ece"] == pytest.approx(ece_direct(labels, p1), abs=5e-5)
            assert frame.loc[n, "test_brier"] == pytest.approx(brier_score_loss(labels, p1), abs=5e-5)
    # The ECE interval resamples whole patients with the bootstrap of the other metrics.
    other = frames["resnet18"]
    members = [np.flatnonzero(other.patient_id.to_numpy() == p) for p in sorted(other.patient_id.unique())]
    rng = np.random.default_rng(4)
    values = []
    for _ in range(N_BOOT):
        idx = np.concatenate([members[p] for p in rng.integers(0, 30, 30)])
        values.append(ece_direct(other.label.to_numpy()[idx], other.prob_1.to_numpy()[idx]))
    low, high = np.percentile(values, [2.5, 97.5])
    assert board.tables[0].frame().set_index("model").loc["resnet18", "ece_ci"] == f"[{low:.4f}, {high:.4f}]"


def test_tables_show_protocol_tests_and_calibration_in_every_format(three, tmp_path: Path) -> None:
    store, _ = three
    board = build_leaderboard(
        store.uri, store.experiment, tables=["summary", "idc"], options=LayoutOptions(n_boot=N_BOOT)
    )
    protocols = {
        "cancernet": "patient, Keras semantics, BN recal.",
        "resnet18": "patient, torch semantics",
        "idc_cnn": "patient, torch (pre-semantics)",
    }
    write_leaderboard(board, tmp_path, html=False)
    for table in board.tables:
        assert {n: shown(table, n, "harness")["protocol"] for n in protocols} == protocols
        assert any("pre-semantics" in note and "BN recal." in note for note in table.footnotes)
        assert any("Holm" in note and "Piepho" in note for note in table.footnotes)
        csv = pd.read_csv(tmp_path / f"{table.name}.csv").query("row_kind == 'harness'").set_index("model")
        frame = table.frame().query("row_kind == 'harness'").set_index("model")
        for column in ("p_accuracy", "p_accuracy_holm", "p_auc", "p_auc_holm", "test_ece", "test_brier"):
            assert csv[column].tolist() == pytest.approx(frame[column].astype(float).tolist(), nan_ok=True)
        assert (
            csv.protocol.to_dict() == protocols and csv.letters_accuracy.to_dict() == frame.letters_accuracy.to_dict()
        )
        md, tex = (tmp_path / f"{table.name}.md").read_text(), (tmp_path / f"{table.name}.full.tex").read_text()
        for header in ("p (McNemar)", "p Holm (acc)", "letters (acc)", "p Holm (AUC)", "letters (AUC)", "ECE", "Brier"):
            assert f"| {header} |" in md and f" & {header} & " in tex.replace("\\", "")
        # The paper's version: the compact columns only, at most a little smaller than \\small on the
        # text width of a two-column paper; the full table would shrink to illegible there.
        paper = (tmp_path / f"{table.name}.tex").read_text()
        assert " & p Holm (acc) & letters (acc) & " in paper and "Brier" not in paper.split("\\bottomrule")[0]
        assert latex_scale(paper) >= 0.75 and latex_scale(tex) < 0.4, (latex_scale(paper), latex_scale(tex))
        for name, protocol in protocols.items():
            cells = shown(table, name, "harness")
            line = next(line for line in md.splitlines() if line.startswith(f"| {name} |")).replace("**", "")
            assert all(
                f"| {cells[key]} |" in line
                for key in ("protocol", "p_accuracy_holm", "letters_accuracy", "test_ece", "test_brier")
            )
            row = next(line for line in tex.splitlines() if line.startswith(name.replace("_", "\\_")))
            row = row.replace("\\textbf{", "").replace("}", "")
            assert f" & {protocol} & " in row and f" & {cells['letters_accuracy']} & " in row


# A two-column paper's text width (IEEE: 7.16 in), and what a tabular's cell takes in it at \\small:
# about 4.4 pt a character of Computer Modern, and 12 pt of padding a column.
TEXT_WIDTH_PT, CHARACTER_PT, PADDING_PT = 516.0, 4.4, 12.0


def latex_scale(tex: str) -> float:
    """Return the factor a table's \\resizebox shrinks it by on a two-column paper's text width, from
    the widest cell of each column (commands and braces removed)."""
    head, rest = tex.split("\\toprule\n")[1].split("\\midrule\n", 1)
    lines = [head, *(x for x in rest.split("\\bottomrule")[0].splitlines() if x != "\\addlinespace")]
    cells = [re.split(r"(?<!\\)&", x.removesuffix(" \\\\")) for x in lines]
    rows = [[re.sub(r"\\[a-z]+\{|[{}]|\\", "", cell).strip() for cell in row] for row in cells]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return min(1.0, TEXT_WIDTH_PT / (CHARACTER_PT * sum(widths) + PADDING_PT * len(widths)))


def test_trials_under_other_protocol_options_are_rows_of_their_own(tmp_path: Path) -> None:
    store, frames = idc_store(
        tmp_path,
        models=(
            ("cancernet", 2.0, 0.9, {"semantics": "source", "bn_recalibration": "false"}),
            ("cancernet", 1.0, 0.8, {"semantics": "torch", "bn_recalibration": "false"}),
        ),
    )
    board = build_leaderboard(store.uri, store.experiment, options=LayoutOptions(n_boot=N_BOOT))
    assert list(board.table.baseline) == ["cancernet [source semantics]", "cancernet [torch semantics]"]
    assert list(board.table.protocol) == ["patient, Keras semantics", "patient, torch semantics"]


def test_a_fold_retrain_shorter_than_the_trials_is_part_of_the_protocol(tmp_path: Path) -> None:
    store, _ = idc_store(tmp_path, models=(("cancernet", 2.0, 0.9, {"semantics": "torch", "epochs": "6"}),))
    (trial,) = store.tracker.client.search_runs([store.experiment_id], f"tags.{tracking.RUN_TYPE} = 'trial'")
    for fold in range(2):
        run = store.run(
            "fold", "cancernet", {}, parent=trial.info.run_id, extra={tracking.FOLD: str(fold)}, params={"epochs": "2"}
        )
        store.tracker.finish(run, tracking.FINISHED)
    board = build_leaderboard(store.uri, store.experiment, options=LayoutOptions(n_boot=N_BOOT))
    assert list(board.table.protocol) == ["patient, torch semantics, folds retrained 2 ep."]
    assert any("Folds retrained N ep." in note for note in board.tables[0].footnotes)


def test_each_leaderboard_computes_its_own_intervals(tmp_path: Path) -> None:
    # Two stores with the same baseline names, one process: no interval may carry over.
    tables = []
    for seed in (11, 12):
        store, frames = idc_store(tmp_path / str(seed), seed=seed)
        board = build_leaderboard(store.uri, store.experiment, options=LayoutOptions(n_boot=N_BOOT))
        row = board.table.set_index("baseline").loc["resnet18"]
        right = (frames["resnet18"].pred == frames["resnet18"].label).to_numpy()
        low, high = (float(x) for x in row.test_accuracy_ci.strip("[]").split(", "))
        assert low <= right.mean() <= high
        tables.append(row.test_accuracy_ci)
    assert tables[0] != tables[1]


def test_003s_two_readings_each_keep_their_own_numbers(tmp_path: Path) -> None:
    store, _ = idc_store(tmp_path, second="efficientnetv2_s")
    table = build_leaderboard(store.uri, store.experiment, tables=["idc"], options=LayoutOptions(n_boot=N_BOOT)).tables[
        0
    ]
    published = [r for r in table.rows if r.kind == "published" and r.group == "efficientnetv2_s"]
    first, second = ({k: c.text for k, c in r.cells.items()} for r in published)
    assert (first["test_accuracy"], first["test_auc"], first["test_f1"], first["test_recall"]) == (
        "0.88",
        "0.94",
        "0.89",
        "0.90",
    )
    assert first["test_precision"] == "88-90%"
    assert second["model"].endswith("(§3.11)") and (second["test_auc"], second["test_f1"]) == ("0.948", "0.88")
    assert "test_accuracy" not in second and "test_recall" not in second  # 003 §3.11 states neither


def test_latex_escapes_comparison_signs() -> None:
    from harness.leaderboard.render import latex_escape

    assert latex_escape("<0.001 | 5% ± 1") == r"\textless{}0.001 \textbar{} 5\% $\pm$ 1"


def test_runs_of_another_split_are_excluded_with_a_message(tmp_path: Path) -> None:
    store, _ = idc_store(tmp_path)
    stray = store.tracker.start_run(
        store.experiment_id,
        name="stray",
        run_type=tracking.RunType.TRIAL,
        params={},
        tags={**store.tags, tracking.SPLIT_HASH: "f" * 64, tracking.BASELINE: "cancernet"},
    )
    store.tracker.log_metrics(stray, {"objective": 1.0, "sel_val_loss": 0.0, "test_accuracy": 1.0}, step=1)
    store.tracker.finish(stray, tracking.FINISHED)
    board = build_leaderboard(store.uri, store.experiment, options=LayoutOptions(n_boot=N_BOOT))
    assert (
        "excluded 1 runs made on another split (ffffffffffff); only split aaaaaaaaaaaa is compared"
        in board.tables[0].footnotes
    )
    assert stray not in set(board.table.best_run_id) and board.table.trials.tolist() == [1, 1]


def test_two_experiments_on_one_split_sit_in_one_table(tmp_path: Path) -> None:
    store, _ = idc_store(tmp_path)
    second = open_store(tmp_path, "idc-lb-2", "idc")
    run = second.run("trial", "cancernet", {"objective": 0.5, "sel_val_loss": 1.0, "test_accuracy": 0.5})
    second.tracker.finish(run, tracking.FINISHED)
    board = build_leaderboard(store.uri, ["idc-lb", "idc-lb-2"], options=LayoutOptions(n_boot=N_BOOT))
    assert list(board.table.baseline) == ["cancernet (idc-lb)", "resnet18 (idc-lb)", "cancernet (idc-lb-2)"]


def _experiment_file(tmp_path: Path, store: Store, tolerance: dict[str, float]) -> Path:
    root = tmp_path / "bach_root"
    root.mkdir(exist_ok=True)
    return write_experiment(
        tmp_path / "bach.yaml",
        {
            "name": store.experiment,
            "dataset": {"name": "bach", "root": str(root), "roi_dir": str(root), "allow_subset": True},
            "baselines": ["gusa_baseline"],
            "tracking_uri": store.uri,
            "output_dir": str(tmp_path / "results"),
            "leaderboard": {"tables": ["gusa-table1"], "tolerance": tolerance},
        },
    )


def test_check_exits_1_outside_the_experiment_files_tolerance(bach, tmp_path: Path) -> None:
    store, _ = bach
    tight = _experiment_file(tmp_path, store, {"default": 0.01})
    result = CliRunner().invoke(app, ["leaderboard", str(tight), "--check", "--no-html", "--bootstrap", "100"])
    assert result.exit_code == 1, result.output
    assert (
        "out of tolerance: gusa-table1: gusa_baseline, val acc (%): reproduced 0.8700, published 0.8700"
        not in result.output
    )
    assert (
        "gusa-table1: gusa_fa_gusa, val acc (%): reproduced 0.8700, published 0.9025 (001 Table I) (published "
        "under another protocol); |difference| 0.0325 > tolerance 0.01 of val_accuracy" in result.output
    )
    loose = _experiment_file(tmp_path, store, {"default": 1.0})
    result = CliRunner().invoke(app, ["leaderboard", str(loose), "--check", "--no-html", "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    assert "check: 8 of 8 reproduced numbers within tolerance" in result.output
    assert (tmp_path / "results" / store.experiment / "gusa-table1.tex").is_file()


def test_unknown_table_and_tolerance_key_exit_2(bach, tmp_path: Path) -> None:
    store, _ = bach
    result = CliRunner().invoke(
        app, ["leaderboard", store.experiment, "--tracking-uri", store.uri, "--table", "table9"]
    )
    assert result.exit_code == 2 and "--table 'table9': expected one of: summary, gusa-table1" in result.output
    bad = _experiment_file(tmp_path, store, {"val_acc": 0.1})
    result = CliRunner().invoke(app, ["leaderboard", str(bad)])
    assert (
        result.exit_code == 2
        and "leaderboard.tolerance" in result.output
        and "unknown metric 'val_acc'" in result.output
    )


CHROMIUM = shutil.which("chromium")
# Appended to a copy of the page: on load it records whether each compact table and image has a
# visible box, whether every image decoded and how it is drawn, which elements stick out of a 1,400 px
# window other than inside a scroll box, which compact tables scroll (scrollWidth over clientWidth),
# and, once every full table is opened and scrolled to its right end, whether its model column stayed
# in place; for --dump-dom to show.
VISIBILITY_PROBE = """<script>
window.addEventListener('load', () => {
  const boxes = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const tables = [...document.querySelectorAll('table.compact')];
  const images = [...document.querySelectorAll('img')];
  const full = [...document.querySelectorAll('details.full table')];
  const wide = [...document.querySelectorAll('body *')].filter(
    el => el.getBoundingClientRect().right > window.innerWidth + 1 && !el.closest('.scroll'));
  const probe = {
    tables: tables.length, visibleTables: tables.filter(boxes).length,
    images: images.length, decoded: images.filter(i => i.complete && i.naturalWidth > 0 && boxes(i)).length,
    rows: document.querySelectorAll('table.compact tr.harness').length,
    fullTables: full.length, fullShown: full.filter(t => t.checkVisibility()).length,
    viewport: window.innerWidth, pageWidth: document.documentElement.scrollWidth,
    sticksOut: wide.map(el => el.tagName),
    compactScrolls: tables.map(t => t.parentElement).filter(b => b.scrollWidth > b.clientWidth)
      .map(b => b.closest('section').id),
    narrowestImage: Math.min(...images.map(i => Math.min(i.naturalWidth, i.getBoundingClientRect().width))),
    rocHeight: images.filter(i => i.alt === 'roc').map(i => i.getBoundingClientRect().height)[0],
    screen: window.innerHeight};
  document.querySelectorAll('details.full').forEach(d => { d.open = true; });
  probe.modelColumnHeld = full.map(t => {
    const box = t.parentElement, before = box.scrollWidth > box.clientWidth;
    box.scrollLeft = box.scrollWidth;
    const cell = t.querySelector('tbody td').getBoundingClientRect().left;
    return before && box.scrollLeft > 0 && Math.abs(cell - box.getBoundingClientRect().left) < 2;
  });
  document.body.setAttribute('data-probe', JSON.stringify(probe));
});
</script>"""


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`make test` installs it when apt-get can)"
)
def test_html_page_shows_tables_and_plots_in_headless_chromium(bach, three, tmp_path: Path) -> None:
    store, models = bach
    board = build_leaderboard(
        store.uri,
        store.experiment,
        tables=["gusa-table1", "gusa-table3", "summary"],
        options=LayoutOptions(n_boot=N_BOOT),
    )
    written = write_leaderboard(board, tmp_path / "out")
    names = {p.name for p in written}
    assert {"leaderboard.html", "roc.png", "pareto.png", "history.png", "confusion.png"} <= names
    page = (tmp_path / "out" / "leaderboard.html").read_text()
    assert 'src="data:image/png;base64,' in page and "file:" not in page  # self-contained
    # The IDC tables (published rows, the widest protocols) on the same page: one browser for all.
    idc = build_leaderboard(
        three[0].uri, three[0].experiment, tables=["summary", "idc"], options=LayoutOptions(n_boot=N_BOOT)
    )
    plots = [(path, path.stem) for path in written if path.suffix == ".png"]
    both = to_html("t", board.intro(), board.tables + idc.tables, plots)
    probe = tmp_path / "probe.html"
    probe.write_text(both.replace("</body>", VISIBILITY_PROBE + "</body>"))
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,900",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    import html
    import json

    found = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', dom).group(1)))
    figures = len([n for n in names if n.endswith(".png")])
    layout = {
        k: found.pop(k)
        for k in ("viewport", "pageWidth", "sticksOut", "compactScrolls", "narrowestImage", "rocHeight", "screen")
    }
    assert found == {
        "tables": 5,
        "visibleTables": 5,
        "images": figures,
        "decoded": figures,
        "rows": 3 * len(models) + 2 * len(THREE_MODELS),
        # Table III is narrow enough to have no other: the full tables wait, closed, under the others.
        "fullTables": 4,
        "fullShown": 0,
        "modelColumnHeld": [True] * 4,
    }
    # Read on a laptop screen: the compact tables fit without scrolling, nothing is wider than the
    # window but inside a full table's own scroll box, the ROC plot fits the screen's height, and
    # every figure is decoded at 600 px or more and drawn that wide.
    assert layout["viewport"] == 1400 and layout["pageWidth"] <= 1400, layout
    assert layout["sticksOut"] == [] and layout["compactScrolls"] == [], layout
    assert layout["rocHeight"] <= layout["screen"] and layout["narrowestImage"] >= 600, layout
    assert "<th>run</th>" not in page and "MLflow run ids" in page  # the ids moved under the table


def test_map_ious_native_and_full_resolution() -> None:
    maps = torch.zeros(3, 1, 2, 2)
    maps[0, 0, 0, 0] = 0.9  # covers the mask's top-left quarter
    maps[2, 0] = 0.8  # everything, against a mask of one quarter
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, :2, :2] = 1
    masks[2, 0, :2, :2] = 1
    native, full = map_ious(maps, masks)
    assert native.tolist() == [1.0, 1.0, 0.25]  # the second image: both empty, scored 1 (§4.3)
    assert full.tolist() == [1.0, 1.0, 0.25]
    assert math.isclose(float(map_ious(maps[:1] * 0, masks[:1])[0]), 0.0)


def test_a_leaderboard_during_a_running_sweep_says_so_and_attaches_nothing_to_it(tmp_path: Path) -> None:
    store, _ = idc_store(tmp_path)
    client = store.tracker.client
    (ended,) = [r for r in client.search_runs([store.experiment_id]) if r.data.tags[tracking.RUN_TYPE] == "sweep"]
    running = client.create_run(
        store.experiment_id,
        start_time=ended.info.start_time + 1000,
        tags={**store.tags, tracking.RUN_TYPE: "sweep"},
        run_name="sweep idc-lb 2026-12-04 09:33",
    ).info.run_id
    args = ["leaderboard", "idc-lb", "--tracking-uri", store.uri, "--output-dir", str(tmp_path / "results")]
    result = CliRunner().invoke(app, [*args, "--no-html", "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    assert (
        "note: sweep idc-lb 2026-12-04 09:33 is still running: these tables hold the runs that have ended so far, "
        "and nothing is attached to it; run harness leaderboard again when it ends" in " ".join(result.output.split())
    )
    assert "attached to sweep run" not in result.output
    assert client.list_artifacts(running) == []
    assert client.get_run(running).info.status == "RUNNING"


def test_the_command_prints_compact_tables_or_every_column_and_attaches_every_file(
    three, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    import harness.cli

    store, _ = three
    monkeypatch.setattr(harness.cli, "console", Console(width=110, force_terminal=True, color_system=None))
    args = ["leaderboard", store.experiment, "--tracking-uri", store.uri, "--output-dir", str(tmp_path), "--no-html"]
    args += ["--bootstrap", "100", "-t", "summary"]
    result = CliRunner().invoke(app, [*args, "--latex-columns", "test_accuracy, test_f1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # Every line fits but the list of files written: a path to copy, never cut.
    fitted = [line for line in lines if not line.startswith("written to ")]
    assert max(len(line) for line in fitted) <= 110 and "## summary: best trial per baseline" in lines
    assert any(line.startswith("cancernet ") and "patient, Keras semantics" in line for line in lines)
    assert "| p (McNemar) |" not in result.output and "(or harness leaderboard --full)" in result.output
    folder = tmp_path / store.experiment
    assert " & test acc & F1 \\\\" in (folder / "summary.tex").read_text()
    # Every file written, the LaTeX and CSV as well, is on the sweep's run.
    (sweep,) = [
        r for r in store.tracker.client.search_runs([store.experiment_id]) if r.data.tags[tracking.RUN_TYPE] == "sweep"
    ]
    attached = {a.path for a in store.tracker.client.list_artifacts(sweep.info.run_id, "leaderboard")}
    assert {f"leaderboard/summary.{ext}" for ext in ("md", "tex", "full.tex", "csv")} <= attached
    full = CliRunner().invoke(app, [*args, "--full"])
    assert full.exit_code == 0 and "| p (McNemar) |" in full.output and "- Bold: the best model's" in full.output
    wrong = CliRunner().invoke(app, [*args, "--latex-columns", "test_acc"])
    assert wrong.exit_code == 2 and "--latex-columns 'test_acc': not a column of these tables" in wrong.output


def test_attaching_the_leaderboard_rewrites_the_sweep_descriptions_line_about_it(tmp_path: Path) -> None:
    store, _ = idc_store(tmp_path)
    client = store.tracker.client
    (sweep,) = [r for r in client.search_runs([store.experiment_id]) if r.data.tags[tracking.RUN_TYPE] == "sweep"]
    pending = f"**Winners** by val_accuracy: cancernet t00 (0.9000)\n\n{tracking.leaderboard_line(None)}"
    store.tracker.set_tags(sweep.info.run_id, {tracking.DESCRIPTION: pending})
    args = ["leaderboard", "idc-lb", "--tracking-uri", store.uri, "--output-dir", str(tmp_path / "results")]
    result = CliRunner().invoke(app, [*args, "--no-html", "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    description = client.get_run(sweep.info.run_id).data.tags[tracking.DESCRIPTION]
    assert description.splitlines()[0] == "**Winners** by val_accuracy: cancernet t00 (0.9000)"
    assert description.splitlines()[-1].startswith(f"{tracking.LEADERBOARD_LINE} attached 20")


EVA_CLASSES = ("tubular_adenoma", "mucinous_carcinoma", "fibroadenoma", "ductal_carcinoma")


@pytest.fixture(scope="module")
def eva_board(tmp_path_factory: pytest.TempPathFactory):
    """A UNI linear probe, a CNN and the majority floor under protocol eva on 4-class BreakHis, 120
    test images of 24 slides with eva's unbalanced classes; the eva and summary tables of them."""
    store = open_store(tmp_path_factory.mktemp("eva"), "eva-lb", "breakhis")
    store.tags[tracking.PROTOCOL] = "eva"
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(4), [18, 14, 28, 60])
    groups = np.array([f"s{k}-{i % 6}" for k, i in zip(labels, range(120))])
    frames = {
        "linear_probe": predictions(rng, labels, groups, 2.5),
        "densenet169": predictions(rng, labels, groups, 0.8),
        "majority": predictions(rng, labels, groups, 0.0).assign(pred=3),
    }
    for (name, frame), objective in zip(frames.items(), (0.9, 0.8, 0.5)):
        metrics = classification_metrics(frame.label.to_numpy(), frame.filter(like="prob_").to_numpy())
        floor = name == "majority"
        run = store.run(
            "floor" if floor else "trial",
            name,
            {"objective": objective, "sel_val_loss": 0.5, **{f"test_{k}": v for k, v in metrics.items()}},
            extra={tracking.FLOOR: "true"} if floor else {tracking.TRIAL_ID: name},
            params={"encoder": "uni", "encoder_sha256": "ab" * 32} if name == "linear_probe" else {},
        )
        store.tracker.log_evaluation(run, "test", evaluation(frame), EVA_CLASSES)
        store.tracker.finish(run, tracking.FINISHED)
    options = LayoutOptions(n_boot=N_BOOT, seed=6)
    return build_leaderboard(store.uri, store.experiment, tables=["eva", "summary"], options=options), frames


def test_eva_table_puts_the_probe_beside_evas_uni_row_and_lists_evas_other_encoders(eva_board) -> None:
    board, frames = eva_board
    eva, summary = board.tables
    frame = eva.frame()
    probe = rows_of(frame, "linear_probe")
    mine = balanced_accuracy_score(frames["linear_probe"].label, frames["linear_probe"].pred)
    assert probe.loc["harness", "test_balanced_accuracy"] == pytest.approx(mine)
    assert probe.loc["published", "model"] == "published: eva: UNI - DINOv2 ViT-L16 | Mass-100k"
    assert probe.loc["published", "test_balanced_accuracy"] == 0.785 and probe.loc["published", "protocol"] == "eva"
    assert probe.loc["difference", "test_balanced_accuracy"] == pytest.approx(mine - 0.785, abs=1e-4)
    published = frame[frame.row_kind == "published"]
    reference = load_reference("eva_leaderboard")
    assert len(published) == 15 == (reference.dataset == "BreakHis").sum()
    others = published[published.group != "linear_probe"].test_balanced_accuracy.tolist()
    assert others == sorted(others, reverse=True) and 0.859 in others  # UNI2-h's, best first
    harness = frame[frame.row_kind.isin(["harness", "floor"])].set_index("group")
    assert list(harness.index) == ["linear_probe", "densenet169", "majority (floor)"]
    assert pd.isna(harness.loc["densenet169", "encoder"]) and harness.loc["linear_probe", "encoder"] == "uni"
    assert any(note.startswith("Protocol `eva`: eva's fixed split") for note in eva.footnotes)
    # The summary carries the logged metric, the same number.
    row = summary.frame().set_index("model").loc["linear_probe"]
    assert row.test_balanced_accuracy == probe.loc["harness", "test_balanced_accuracy"]


def test_eva_balanced_accuracy_interval_and_paired_test_against_direct_computation(eva_board) -> None:
    board, frames = eva_board
    harness = board.tables[0].frame().query("row_kind == 'harness'").set_index("group")
    other, reference = frames["densenet169"], frames["linear_probe"]
    members = [np.flatnonzero(other.patient_id.to_numpy() == p) for p in sorted(other.patient_id.unique())]
    rng = np.random.default_rng(6)
    draws = [np.concatenate([members[p] for p in rng.integers(0, 24, 24)]) for _ in range(N_BOOT)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample without a class: scikit-learn averages the others
        mine = [balanced_accuracy_score(other.label[d], other.pred[d]) for d in draws]
        theirs = [balanced_accuracy_score(reference.label[d], reference.pred[d]) for d in draws]
    low, high = np.percentile(mine, [2.5, 97.5])
    assert harness.loc["densenet169", "balanced_accuracy_ci"] == f"[{low:.4f}, {high:.4f}]"
    difference = balanced_accuracy_score(other.label, other.pred) - balanced_accuracy_score(
        reference.label, reference.pred
    )
    z = difference / np.std(np.subtract(mine, theirs), ddof=1)
    assert harness.loc["densenet169", "p_balanced_accuracy"] == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert pd.isna(harness.loc["linear_probe", "p_balanced_accuracy"])
    assert set(harness.letters_balanced_accuracy) <= set("ab")


def test_the_balanced_accuracy_column_renders_in_markdown_latex_and_html(eva_board, tmp_path: Path) -> None:
    board, _ = eva_board
    write_leaderboard(board, tmp_path, html=False)
    for table in board.tables:
        header = "balanced accuracy" if table.name == "eva" else "test bal. acc"
        value = shown(table, "linear_probe", "harness")["test_balanced_accuracy"]
        line = next(x for x in (tmp_path / f"{table.name}.md").read_text().splitlines() if x.startswith("| linear"))
        assert f"| {header} |" in (tmp_path / f"{table.name}.md").read_text() and value in line
        tex = (tmp_path / f"{table.name}.full.tex").read_text()
        assert f" & {header} & " in tex and value in next(x for x in tex.splitlines() if x.startswith("linear"))
        page = to_html("t", [], [table], [])
        assert f"<th>{header}</th>" in page and value in page
    paper = (tmp_path / "eva.tex").read_text()
    assert " & balanced accuracy & 95\\% CI & p Holm (bal. acc) & letters (bal. acc) & " in paper


def test_registered_winners_are_tagged_from_the_summary_rows_whatever_table_comes_first(eva_board) -> None:
    board, _ = eva_board
    eva, summary = board.tables
    # An experiment asking for the eva table alone: its rows carry no run, the summary's do.
    alone = Leaderboard(board.runs, [eva], board.options).table
    assert list(alone.best_run_id) == list(Leaderboard(board.runs, [summary]).table.best_run_id)
    assert set(alone.baseline) == {"linear_probe", "densenet169", "majority (floor)"}


def test_a_probe_on_a_random_encoder_is_not_set_beside_evas_row_of_that_encoder(tmp_path: Path) -> None:
    # No weights file, so no digest logged: a control, not UNI.
    store = open_store(tmp_path, "eva-random", "breakhis")
    store.tags[tracking.PROTOCOL] = "eva"
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 10)
    frame = predictions(rng, labels, np.array([f"s{i % 8}" for i in range(40)]), 1.0)
    metrics = classification_metrics(frame.label.to_numpy(), frame.filter(like="prob_").to_numpy())
    run = store.run(
        "trial",
        "linear_probe",
        {"objective": 0.7, "sel_val_loss": 0.5, **{f"test_{k}": v for k, v in metrics.items()}},
        extra={tracking.TRIAL_ID: "t0"},
        params={"encoder": "uni"},
    )
    store.tracker.log_evaluation(run, "test", evaluation(frame), EVA_CLASSES)
    store.tracker.finish(run, tracking.FINISHED)
    board = build_leaderboard(store.uri, store.experiment, tables=["eva"], options=LayoutOptions(n_boot=50, seed=1))
    frame = board.tables[0].frame()
    probe = frame[frame.group == "linear_probe"].set_index("row_kind")
    assert list(probe.index) == ["harness"] and probe.loc["harness", "encoder"] == "uni (random init)"
    # eva's UNI row is listed with the others, on its own.
    assert "published: eva: UNI - DINOv2 ViT-L16 | Mass-100k" in set(frame.model[frame.row_kind == "published"])
