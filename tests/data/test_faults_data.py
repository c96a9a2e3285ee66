"""Faults in the data a hostile but realistic user meets: a manifest from another copy of the data
or whose files changed since, symlinked folders, names that only look like the layout, and a
network call at import. Each runs the real command (or set-up) on real files and checks the exit
code, the one line printed and, where pixels are involved, which pixels were cached."""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from harness.config import ExperimentConfig, load_experiment
from harness.data.cache import StaleFiles, build_image_cache, open_patch_cache
from harness.data.datasets.bach import index_bach, write_synthetic_bach
from harness.data.datasets.idc import LAYOUT, write_synthetic_idc
from harness.data.manifest import read_manifest
from harness.data.prepare import PreparedData, load_or_index, prepare
from harness.data.records import content_digest
from tests.conftest import REPO, experiment_dict, write_experiment

GREEN = "90002/1/90002_idx5_x51_y5101_class1.png"
GONE = "90005"


def _index(*args: str) -> tuple[int, str]:
    """Run `harness data index ARGS --allow-subset` in this process; returns its exit code and stderr."""
    result = CliRunner().invoke(app, ["data", "index", *args, "--allow-subset"])
    return result.exit_code, result.stderr


def _paint_green(path: Path) -> np.ndarray:
    """Paint the patch at `path` green, keeping its name and size; returns its new pixels."""
    with Image.open(path) as im:
        pixels = np.zeros_like(np.asarray(im.convert("RGB")))
    pixels[..., 1] = 255
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def copy_a(tmp_path: Path) -> tuple[Path, Path]:
    """Root A, a 6-patient IDC tree, and its manifest A.parquet from `harness data index`."""
    root, manifest = write_synthetic_idc(tmp_path / "A", patients=6, seed=4), tmp_path / "A.parquet"
    assert _index("--root", str(root), "--out", str(manifest))[0] == 0
    return root, manifest


def _experiment(tmp_path: Path, root: Path, manifest: Path) -> Path:
    """Write an experiment over `root` that names `manifest` (dataset.manifest); returns its path."""
    dataset = {"name": "idc", "root": str(root), "allow_subset": True, "manifest": str(manifest)}
    # Two folds: B, one patient less than A's six, still makes a test set and its folds.
    protocol = {"folds": 2, "test_fraction": 0.25, "seed": 0}
    data = experiment_dict(root, tmp_path / "out", dataset=dataset, protocol=protocol)
    return write_experiment(tmp_path / "x.yaml", data)


def _train(experiment: Path, *args: str) -> tuple[int, list[str]]:
    """Run `harness train EXPERIMENT --baseline cancernet ARGS` in this process; returns its exit
    code and the lines of its stderr."""
    result = CliRunner().invoke(app, ["train", str(experiment), "--baseline", "cancernet", *args])
    return result.exit_code, result.stderr.strip().splitlines()


def _prepared(config: ExperimentConfig) -> PreparedData:
    """Return the data `config`'s set-up prepares (its manifest loaded, split and cached)."""
    manifest, _ = load_or_index(config.dataset)
    return prepare(manifest, config.dataset, config.protocol, config.output_dir / "_data")


def _cached(data: PreparedData, rel_path: str) -> np.ndarray:
    """Return the cached pixels of the image `rel_path` of prepared `data`."""
    row = read_manifest(data.manifest_path)[0].rel_path.tolist().index(rel_path)
    return np.asarray(open_patch_cache(data.cache_path)[row])


def _reindex(line: str) -> str:
    """Run the `harness data index` command a refusal `line` names between backticks; returns its stderr."""
    command = shlex.split(line.split("`")[1])
    assert command[:3] == ["harness", "data", "index"]
    result = CliRunner().invoke(app, command[1:])
    assert result.exit_code == 0, result.output
    return result.stderr


def test_a_manifest_under_another_root_is_refused_until_that_root_is_indexed(
    tmp_path: Path, copy_a: tuple[Path, Path]
) -> None:
    root_a, manifest = copy_a
    root_b = tmp_path / "B"
    shutil.copytree(root_a, root_b)
    shutil.rmtree(root_b / GONE)
    green = _paint_green(root_b / GREEN)
    experiment = _experiment(tmp_path, root_a, manifest)
    code, lines = _train(experiment, "--root", str(root_b))
    assert code == 2
    assert lines == [
        f"error: {manifest}: manifest of idc root {root_a}, but the dataset root is {root_b}; index that root "
        f"with `harness data index --dataset idc --root {root_b} --allow-subset --out {manifest}`"
    ]
    assert not (tmp_path / "out" / "mlflow.db").exists()

    _reindex(lines[0])
    data = _prepared(load_experiment(experiment, dataset_root=root_b))
    assert GONE not in set(read_manifest(data.manifest_path)[0].patient_id)
    np.testing.assert_array_equal(_cached(data, GREEN), green)


def test_a_manifest_whose_files_changed_is_refused_and_no_cache_is_built(
    tmp_path: Path, copy_a: tuple[Path, Path]
) -> None:
    root, manifest = copy_a
    green = _paint_green(root / GREEN)
    experiment = _experiment(tmp_path, root, manifest)
    code, lines = _train(experiment)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: idc root {root} differs from its last index, {manifest}: 120 files with ")
    assert lines[0].endswith(
        f"; 1 file(s) changed or gone since (first {GREEN}), and no cache is built from them: index it again with "
        f"`harness data index --dataset idc --root {root} --allow-subset --out {manifest}`"
    )
    assert not [path for path in (tmp_path / "out").rglob("*") if path.is_file()]

    # The command it names prints the line an index of a changed root prints, the same words.
    assert f"warning: idc root {root} differs from its last index (" in _reindex(lines[0])
    np.testing.assert_array_equal(_cached(_prepared(load_experiment(experiment)), GREEN), green)


def test_the_image_cache_refuses_a_changed_or_missing_file_and_leaves_no_file(tmp_path: Path) -> None:
    root, _ = write_synthetic_bach(tmp_path / "bach", per_class=2, size=(48, 64), masks=False)
    manifest = index_bach(root, allow_subset=True).manifest
    changed, gone = Path(manifest.path[1]), Path(manifest.path[5])
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(changed)
    gone.unlink()
    with pytest.raises(StaleFiles) as refused:
        build_image_cache(manifest, "key", tmp_path / "cache", size=(24, 32))
    assert refused.value.now == {1: content_digest(changed.read_bytes()), 5: None}
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]


def test_a_manifest_with_absolute_paths_asks_for_a_new_index(tmp_path: Path, copy_a: tuple[Path, Path]) -> None:
    root, manifest = copy_a
    # What an older harness wrote: every path absolute, no root recorded.
    frame, meta = read_manifest(manifest)
    del meta["root"]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({b"histo_harness": json.dumps(meta).encode()}), manifest)
    code, lines = _train(_experiment(tmp_path, root, manifest))
    assert code == 2
    assert lines == [
        f"error: {manifest}: manifest paths must be relative to the root it records, found path "
        f"'{frame.path[0]}' (written by an older harness?); index the dataset again with `harness data index`"
    ]


def test_digits_of_another_script_do_not_pass_for_an_idc_name(tmp_path: Path) -> None:
    root = write_synthetic_idc(tmp_path / "idc", patients=2)
    # int() reads U+0665 U+0661 as 51: the name looked like a patch at x = 51.
    lookalike = root / "90000" / "0" / "90000_idx5_x\u0665\u0661_y1_class0.png"
    shutil.copy(root / "90000" / "0" / "90000_idx5_x1_y1_class0.png", lookalike)
    code, stderr = _index("--root", str(root), "--out", str(tmp_path / "m.parquet"))
    assert code == 2
    assert stderr.strip().splitlines() == [f"error: {lookalike}: name does not match {LAYOUT}"]


def test_a_symlinked_patient_folder_is_indexed_and_a_link_loop_ends(tmp_path: Path) -> None:
    root = write_synthetic_idc(tmp_path / "idc", patients=3)
    # A tree assembled from links: one patient lives elsewhere; a link inside the tree points back up.
    shutil.move(root / "90002", tmp_path / "90002")
    (root / "90002").symlink_to(tmp_path / "90002")
    (root / "90000" / "up").symlink_to(root)
    out = tmp_path / "m.parquet"
    code, stderr = _index("--root", str(root), "--out", str(out))
    assert code == 0, stderr
    manifest = read_manifest(out)[0]
    assert sorted(manifest.patient_id.unique()) == ["90000", "90001", "90002"]
    assert len(manifest) == 3 * 20 and manifest.rel_path.is_unique
    assert (root / "90002" / "1" / "90002_idx5_x1_y5101_class1.png").as_posix() in set(manifest.path)


# Records every name lookup and connection from the start, imports the per-image pipelines and
# runs one, then prints what was attempted and whether the update-check variable was left set.
NO_NETWORK = """
import json, os, sys
attempts = []
sys.addaudithook(lambda event, args: attempts.append([event, repr(args)[:120]])
                 if event in ("socket.getaddrinfo", "socket.connect") else None)
import numpy as np
from types import SimpleNamespace
from harness.data.transforms import build_transform
params = SimpleNamespace(augment="gusa", rotation="free", noise_std=0.1, intensity=0.2, input_hw=(48, 48))
out = build_transform(params, stored_hw=(50, 50), train=True)(image=np.zeros((50, 50, 3), np.uint8))
print(json.dumps({"attempts": attempts, "shape": list(out["image"].shape),
                  "left_set": "NO_ALBUMENTATIONS_UPDATE" in os.environ}))
"""


def test_building_a_per_image_pipeline_makes_no_network_call() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    probe = subprocess.run(
        [sys.executable, "-c", NO_NETWORK], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report == {"attempts": [], "shape": [3, 48, 48], "left_set": False}


def _imports_albumentations(node: ast.AST) -> bool:
    """Return True when `node` is an import statement of albumentations or one of its modules."""
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "albumentations" for alias in node.names)
    return isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("albumentations")


def test_albumentations_is_imported_in_one_place() -> None:
    # Any other import, run first, would make the update check's network call.
    files = [path for folder in ("harness", "baselines", "bench") for path in (REPO / folder).rglob("*.py")]
    importers = {
        path.relative_to(REPO).as_posix()
        for path in files
        if any(_imports_albumentations(node) for node in ast.walk(ast.parse(path.read_text())))
    }
    assert importers == {"harness/data/_albumentations.py"}
