"""The published tables in harness/leaderboard/published/ against BASELINES.md's ```csv blocks and its prose."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.leaderboard.reference import (
    EXTERNAL_TABLES,
    REFERENCE_DIR,
    extract_reference_tables,
    load_reference,
    read_reference_blocks,
    render_readme,
    write_reference_tables,
)

BASELINES_MD = Path(__file__).resolve().parents[3] / "shared" / "BASELINES.md"

ROW_COUNTS = {
    "gusa_table1": 8,
    "gusa_table2_miou": 2,
    "gusa_table3_class_auc": 4,
    "gusa_table4_confusion": 16,
    "glam_abstract": 2,
    "essex2023_idc": 13,
    "karatayev2021_split": 5,
    "karatayev2021_table3": 5,
    "karatayev2021_table4": 5,
    "karatayev2021_confusion": 2,
    "pis_cancernet": 11,
    "amil_breakhis_bach": 5,
    "karatayev2021_related_work": 1,
}


@pytest.fixture(scope="module")
def baselines_md() -> Path:
    if not BASELINES_MD.is_file():
        pytest.skip(f"BASELINES.md not found at {BASELINES_MD} (the shared/ folder beside the checkout)")
    return BASELINES_MD


@pytest.fixture(scope="module")
def tables(baselines_md: Path) -> dict[str, pd.DataFrame]:
    return extract_reference_tables(baselines_md)


def _raw_csv_blocks(text: str) -> list[list[str]]:
    """The lines between each ```csv fence and the next ```, found without the module under test."""
    blocks, current = [], None
    for line in text.splitlines():
        if current is None and line == "```csv":
            current = []
        elif current is not None and line == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_one_named_table_per_block_with_its_rows(tables: dict[str, pd.DataFrame]) -> None:
    assert {name: len(frame) for name, frame in tables.items()} == ROW_COUNTS
    assert list(tables) == list(ROW_COUNTS), "tables come in BASELINES.md order"


def test_committed_folder_equals_a_fresh_extraction(baselines_md: Path, tables: dict[str, pd.DataFrame]) -> None:
    external = [t.name for t in EXTERNAL_TABLES]
    assert sorted(p.stem for p in REFERENCE_DIR.glob("*.csv")) == sorted([*tables, *external]), (
        "harness/leaderboard/published/ is stale: run python -m harness.leaderboard.reference ../shared/BASELINES.md"
    )
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(load_reference(name), frame, obj=name)
    readme = (REFERENCE_DIR / "README.md").read_text(encoding="utf-8")
    assert readme == render_readme(read_reference_blocks(baselines_md))


def test_each_csv_line_begins_with_the_block_line_unchanged(
    baselines_md: Path, tables: dict[str, pd.DataFrame]
) -> None:
    raw_blocks = _raw_csv_blocks(baselines_md.read_text(encoding="utf-8"))
    assert len(raw_blocks) == len(tables) == 13
    for name, raw_lines in zip(tables, raw_blocks, strict=True):
        written = (REFERENCE_DIR / f"{name}.csv").read_text(encoding="utf-8").splitlines()
        added = len(tables[name].columns) - len(raw_lines[0].split(","))
        assert len(written) == len(raw_lines), name
        for raw, line in zip(raw_lines, written, strict=True):
            assert line.startswith(raw), (name, raw, line)
            assert line[len(raw) :].count(",") == added, (name, line)


# Cells read by hand from BASELINES.md's markdown tables and prose, not from its ```csv blocks.
HAND_PICKED = [
    ("gusa_table1", {"network": "B + FA + GuSA (proposed)"}, "val_acc_mean_pct", "90.25"),
    ("gusa_table1", {"network": "B + FA + GuSA (proposed)"}, "val_acc_pm_pct", "1.84"),
    ("gusa_table1", {"network": "B + FA + GuSA (proposed)"}, "test_acc_ensemble_pct", "93"),
    ("gusa_table1", {"network": "B + FA + GuSA (proposed)"}, "params_published", "7024844"),
    ("gusa_table1", {"network": "Baseline (B)"}, "val_auc_macro", "0.97721"),
    ("gusa_table1", {"network": "B + Feature Aggregation (FA)"}, "val_acc_pm_pct", "0.5"),
    ("gusa_table2_miou", {"network": "B + FA + GuRoI"}, "mean", "0.782"),
    ("gusa_table2_miou", {"network": "B + FA + GuSA"}, "pm", "0.014"),
    ("gusa_table3_class_auc", {"network": "B+FA+GuRoI"}, "auc_benign", "0.9731"),
    ("gusa_table3_class_auc", {"network": "Baseline (B)"}, "auc_insitu", "0.9750"),
    ("gusa_table4_confusion", {"panel": "a", "true_class": "Benign"}, "pred_normal", "0.1"),
    ("gusa_table4_confusion", {"panel": "d", "true_class": "Insitu"}, "pred_insitu", "0.94"),
    ("gusa_table4_confusion", {"panel": "d", "true_class": "Invasive"}, "pred_benign", "0"),
    ("glam_abstract", {"class": "malignant"}, "value", "20.0"),
    ("essex2023_idc", {"metric": "sensitivity_idc"}, "value", "0.90"),
    ("karatayev2021_split", {"table": "II", "split": "test"}, "non_idc", "15000"),
    ("karatayev2021_table3", {"network": "ResNet18"}, "test_accuracy", "0.84"),
    ("karatayev2021_table3", {"network": "ResNet18"}, "test_loss", "0.40"),
    ("karatayev2021_table4", {"row": "accuracy"}, "precision", "NA"),
    ("karatayev2021_confusion", {"true_class": "1"}, "pred_0", "496"),
    ("pis_cancernet", {"metric": "accuracy"}, "value", "0.8370"),
    ("pis_cancernet", {"metric": "cm_true0_pred1"}, "value", "6746"),
    ("amil_breakhis_bach", {"dataset": "BACH-A"}, "value", "NA"),
    ("karatayev2021_related_work", {"metric": "f1"}, "value", "0.7648"),
]


@pytest.mark.parametrize(("name", "where", "column", "expected"), HAND_PICKED)
def test_hand_picked_cells_are_as_printed(
    tables: dict[str, pd.DataFrame], name: str, where: dict[str, str], column: str, expected: str
) -> None:
    frame = tables[name]
    selected = frame.loc[(frame[list(where)] == pd.Series(where)).all(axis=1), column]
    assert selected.tolist() == [expected]


def test_every_row_names_its_source_dataset_and_protocol(tables: dict[str, pd.DataFrame]) -> None:
    for name, frame in tables.items():
        for column in ("source", "dataset", "protocol"):
            assert column in frame.columns, (name, column)
            assert (frame[column].str.strip() != "").all(), (name, column)


def test_protocols_taken_from_the_prose(tables: dict[str, pd.DataFrame]) -> None:
    for name in ("gusa_table1", "gusa_table2_miou", "gusa_table3_class_auc", "gusa_table4_confusion"):
        assert set(tables[name]["protocol"]) == {"gusa_4fold"}, name
    split = tables["karatayev2021_split"]
    assert dict(zip(split["table"], split["protocol"], strict=True)) == {
        "I": "karatayev2021_imbalanced",
        "II": "karatayev2021",
    }
    assert tables["gusa_table3_class_auc"].columns[-1] == "protocol", "added columns come after the published ones"
    assert set(tables["glam_abstract"]["protocol"]) == {"NA"}


def test_written_tables_read_back_unchanged(tables: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    paths = write_reference_tables(tables, tmp_path / "ref")
    assert [p.name for p in paths] == [f"{name}.csv" for name in tables]
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(load_reference(name, tmp_path / "ref"), frame, obj=name)
    with pytest.raises(FileNotFoundError, match="gusa_table9"):
        load_reference("gusa_table9", tmp_path / "ref")


def _markdown(*block_lines: str) -> str:
    # The fence opens on line 5.
    return "\n".join(["# T", "", "### 3.1 A section", "", "```csv", *block_lines, "```", ""])


@pytest.mark.parametrize(
    ("block_lines", "message"),
    [
        (
            ["source,table,dataset,protocol", "a,I,BACH-A,gusa_4fold", "b,I,BACH-A"],
            r"line 5\b.*ragged.*line 8\b.*3 fields",
        ),
        (["source,table,dataset,protocol", "a,I,BACH-A,gusa_4fold,extra"], r"line 5\b.*ragged.*line 7\b.*5 fields"),
        (["source,table,dataset,protocol", "a,XI,BACH-A,gusa_4fold"], r"line 5\b.*no reference name.*XI"),
        (["source,table,dataset", "a,I,BACH-A"], r"line 5\b.*`protocol`"),
    ],
)
def test_malformed_block_raises_with_its_line(tmp_path: Path, block_lines: list[str], message: str) -> None:
    md = tmp_path / "BASELINES.md"
    md.write_text(_markdown(*block_lines), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        extract_reference_tables(md)


def test_unclosed_block_raises_with_its_line(tmp_path: Path) -> None:
    md = tmp_path / "BASELINES.md"
    md.write_text("# T\n\n```csv\nsource,table\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3\b.*never closed"):
        extract_reference_tables(md)


def test_evas_reference_rows_name_their_file_and_commit_and_give_both_datasets_per_encoder() -> None:
    frame = load_reference("eva_leaderboard")
    assert set(frame.source_file) == {"kaiko-ai/eva tools/data/leaderboards/pathology.csv"}
    assert set(frame.source_commit) == {"73b61a797bfda8daf232f6abea2bc87ac614589c"}
    assert set(frame.protocol) == {"eva"} and set(frame.metric) == {"balanced_accuracy"}
    assert all(sorted(group.dataset) == ["BACH-A", "BreakHis"] for _, group in frame.groupby("model"))
    assert frame.model.nunique() == 15 and frame.value.astype(float).between(0, 1).all()
    presets = {"uni", "uni2_h", "virchow2", "h_optimus_0", "phikon", "phikon_v2", "gigapath", "NA"}
    assert set(frame.harness_encoder) == presets
    uni2 = frame[frame.harness_encoder == "uni2_h"].set_index("dataset").value.to_dict()
    assert uni2 == {"BACH-A": "0.915", "BreakHis": "0.859"}  # as eva's file prints them
