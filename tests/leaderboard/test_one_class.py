"""A model whose test predictions are almost all one class is called out, in the tables and in the
leakage study, on runs written with constant predictions through the harness's own tracking calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import tracking
from harness.leaderboard import LayoutOptions, build_leaderboard, collect_runs
from harness.leaderboard.collapse import one_class
from harness.leaderboard.leakage import leakage_plot, leakage_table
from harness.leaderboard.render import latex_escape, to_html, to_latex, to_markdown
from tests.leaderboard.test_leaderboard import IDC_CLASSES, evaluation, open_store, predictions

LABELS = np.array([0, 0, 0, 1] * 15)  # 75% non_idc, as on the real IDC set
PATIENTS = np.repeat([f"p{i:02d}" for i in range(12)], 5)


def constant(rng: np.random.Generator, labels: np.ndarray, patients: np.ndarray) -> pd.DataFrame:
    """Return predictions that lean to non_idc for every image, with a little noise (AUC stays defined)."""
    frame = predictions(rng, labels, patients, 0.0)
    p1 = 0.3 + rng.uniform(-0.05, 0.05, len(labels))
    return frame.assign(prob_0=1 - p1, prob_1=p1, pred=0)


def test_one_class_needs_the_share_and_labels_that_are_not_that_unbalanced() -> None:
    frame = pd.DataFrame({"label": [0] * 75 + [1] * 25, "pred": [0] * 99 + [1]})
    found = one_class(frame, ["non_idc", "idc"])
    assert found is not None and (found.name, found.share, found.label_share) == ("non_idc", 0.99, 0.75)
    # A model that leaves more than 2% to the other class, and a test set as unbalanced as its predictions.
    assert one_class(frame.assign(pred=[0] * 97 + [1] * 3), ["non_idc", "idc"]) is None
    assert one_class(pd.DataFrame({"label": [0] * 99 + [1], "pred": [0] * 100}), ["a", "b"]) is None


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory: pytest.TempPathFactory):
    """CancerNet predicting non_idc for every test image, a skilled ResNet-18, and the majority floor."""
    store = open_store(tmp_path_factory.mktemp("one_class"), "idc-one-class", "idc")
    rng = np.random.default_rng(3)
    frames = {
        "cancernet": constant(rng, LABELS, PATIENTS),
        "resnet18": predictions(rng, LABELS, PATIENTS, 3.0),
        "majority": constant(rng, LABELS, PATIENTS),
    }
    for (name, frame), objective in zip(frames.items(), (0.9, 0.8, 0.75)):
        floor = name == "majority"
        accuracy = float((frame.pred == frame.label).mean())
        run = store.run(
            "floor" if floor else "trial",
            name,
            {"objective": objective, "sel_val_loss": 0.5, "test_accuracy": accuracy},
            extra={tracking.FLOOR: "true"} if floor else {tracking.TRIAL_ID: name},
        )
        store.tracker.log_evaluation(run, "test", evaluation(frame), IDC_CLASSES)
        store.tracker.finish(run, tracking.FINISHED)
    return store


def test_a_model_predicting_one_class_is_called_out_and_never_bold(collapsed) -> None:
    board = build_leaderboard(
        collapsed.uri, collapsed.experiment, tables=["summary", "idc"], options=LayoutOptions(n_boot=100)
    )
    line = "cancernet predicts non_idc for 100.0% of test images: no better than majority (non_idc is 75.0% of them)"
    for table in board.tables:
        rows = {r.group: r for r in table.rows if r.kind != "published" and r.kind != "difference"}
        assert [g for g, r in rows.items() if r.collapsed] == ["cancernet"]  # never the floor, by design one class
        assert line in table.callouts()
        markdown, tex = to_markdown(table), to_latex(table, columns=table.compact_columns())
        assert f"- **{line}**" in markdown and f'<p class="lead">{line}</p>' in to_html("t", [], [table], [])
        assert f"\\textbf{{{latex_escape(line)}}}\\par" in tex
        assert any("Predicts one class" in note for note in table.footnotes)
        # The one-class row takes no bold cell, though it ranks first by validation objective.
        cancernet = next(x for x in markdown.splitlines() if x.startswith("| cancernet |"))
        assert "**" not in cancernet
        assert "**" in next(x for x in markdown.splitlines() if x.startswith("| resnet18 |"))


def _study(store, models: dict[str, list[pd.DataFrame]]) -> str:
    """Write a leakage study of two folds: each model's four arm-folds with the given test predictions
    (patch-random fold 0, patient fold 0, patch-random fold 1, patient fold 1)."""
    study = store.run("study", "", {}, params={"folds": "2", "epochs": "2"})
    for name, frames in models.items():
        for i, frame in enumerate(frames):
            fold, protocol = divmod(i, 2)
            tags = {
                tracking.PARENT: study,
                tracking.FOLD: str(fold),
                tracking.PROTOCOL: (tracking.PATCH_RANDOM, tracking.PATIENT)[protocol],
                "shared_test_patients": "3" if protocol == 0 else "0",
            }
            accuracy = float((frame.pred == frame.label).mean())
            run = store.run("study_arm", name, {"test_accuracy": accuracy}, extra=tags, params={"epochs": "2"})
            store.tracker.log_evaluation(run, "test", evaluation(frame), IDC_CLASSES)
            store.tracker.finish(run, tracking.FINISHED)
    store.tracker.finish(study, tracking.FINISHED)
    return study


def test_leakage_arms_predicting_one_class_report_no_inflation(collapsed, tmp_path: Path) -> None:
    # Another experiment in the fixture's store: a second store would cost its schema's creation.
    store = open_store(Path(collapsed.uri.removeprefix("sqlite:///")).parent, "leak-one-class", "idc")
    rng = np.random.default_rng(5)
    half, groups = LABELS[:30], PATIENTS[:30]
    skilled = [predictions(rng, half, groups, 3.0) for _ in range(4)]
    study = _study(
        store,
        {
            "cancernet": [constant(rng, half, groups) for _ in range(4)],
            "resnet18": skilled,
            "idc_cnn": [*skilled[:3], constant(rng, half, groups)],
        },
    )
    table = leakage_table(store.uri, store.experiment, study, n_boot=100)
    rows = {r.group: r for r in table.rows}
    assert rows["cancernet"].collapsed and not rows["resnet18"].collapsed and not rows["idc_cnn"].collapsed
    shown = {key: cell.text for key, cell in rows["cancernet"].cells.items()}
    assert shown["inflation_accuracy"] == shown["inflation_auc"] == "n/a: one class"
    assert shown["inflation_accuracy_low"] == shown["inflation_fold0"] == "-" and shown["one_class"] == "4 of 4"
    assert (
        rows["resnet18"].cells["one_class"].text == "0 of 4"
        and rows["resnet18"].cells["inflation_accuracy"].value is not None
    )
    assert table.callouts() == [
        "cancernet predicts one class (non_idc) in all 4 arm-folds, for at least 100.0% of each held-out fold's "
        "images: its accuracies restate each fold's class balance, and the difference between the arms is not "
        "leakage; no inflation is reported",
        "idc_cnn predicts one class (non_idc, at least 100.0% of the images) in 1 of 4 arm-folds (patient fold 1): "
        "those folds restate the class balance, not what leaked",
    ]
    assert any("not leakage" in note for note in table.footnotes)
    # The CSV keeps the numbers; the Markdown says what they are.
    assert table.frame().set_index("group").loc["cancernet", "inflation_accuracy"] == pytest.approx(0.0)
    assert "| cancernet | " in to_markdown(table) and "n/a: one class" in to_markdown(table)
    assert leakage_plot(table, tmp_path / "leakage.png").stat().st_size > 0


def test_the_history_figure_leaves_out_floors(collapsed, tmp_path: Path) -> None:
    from PIL import Image

    from harness.leaderboard.plots import history_figure

    runs = collect_runs(collapsed.uri, [collapsed.experiment])
    assert [r.label for r in runs.baselines if r.floor] == ["majority (floor)"]
    ((path, _),) = history_figure(runs, tmp_path)
    # Two panels of 3.4 in, saved at 200 dpi: cancernet's and resnet18's, not the floor's single point.
    assert Image.open(path).width == pytest.approx(2 * 3.4 * 200, abs=2)
