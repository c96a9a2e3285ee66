"""The dataset registry: the published datasets by name, and a new dataset as one module."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from harness.data.datasets import DatasetSpec, dataset, dataset_names, register_dataset


def test_the_published_datasets_are_registered_with_their_layout_and_labels() -> None:
    assert dataset_names() == ["bach", "breakhis", "idc"]
    assert dataset("breakhis").labels["subtype"][0] == "adenosis"
    assert dataset("idc").protocol.counts["patients"] == 279
    assert not dataset("bach").protocol.patient_ids
    with pytest.raises(ValueError, match="dataset 'idc' is already registered"):
        register_dataset(dataset("idc"))


def test_a_spec_takes_only_the_options_and_label_sets_its_dataset_reads(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="roi_dir applies to bach and breakhis only, not to idc"):
        DatasetSpec(name="idc", root=tmp_path, roi_dir=tmp_path)
    with pytest.raises(ValidationError, match="label 'subtype': bach's label sets are four_class"):
        DatasetSpec(name="bach", root=tmp_path, label="subtype")
    spec = DatasetSpec(name="breakhis", root=tmp_path, label="subtype", image_size=(96, 128))
    assert spec.traits().class_names == dataset("breakhis").labels["subtype"] and spec.traits().size == (96, 128)


# A dataset of its own layout, `<patient>/<class>/<anything>.png`, written as a user would: this
# module and nothing else makes it indexable, preparable and trainable by name.
TOY_MODULE = """
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.datasets import Dataset, DatasetSpec, PublishedProtocol, register_dataset
from harness.data.records import IndexResult, collect, decode

CLASSES = ("calm", "busy")


def _inspect(path: Path):
    image = decode(path)
    label = CLASSES.index(path.parent.name)
    row = {"path": str(path.resolve()), "rel_path": path.relative_to(path.parents[2]).as_posix(),
           "label": label, "class_name": CLASSES[label], "patient_id": path.parents[1].name,
           "dataset": "toy", "width": image.width, "height": image.height, "digest": image.digest, "flags": ""}
    return row, None


def _index(spec: DatasetSpec, show_progress: bool) -> IndexResult:
    files = sorted(Path(spec.root).glob("*/*/*.png"))
    return collect(files, _inspect, lambda p: p, what="toy patches", skip_bad=spec.skip_bad)


def _synthesise(out: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    for patient in range(8):
        for label, name in enumerate(CLASSES):
            folder = out / f"p{patient}" / name
            folder.mkdir(parents=True)
            for i in range(6):
                pixels = rng.integers(0, 80 + 120 * label, (50, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return f"toy tree written to {out}"


register_dataset(Dataset(
    name="toy", layout="<patient>/<calm|busy>/<n>.png", protocol=PublishedProtocol(source="this test", counts={}),
    labels={"binary": CLASSES}, storage="patches", size=(50, 50), input_kinds=frozenset({"image"}),
    index=_index, synthesise=_synthesise,
))
"""

# Imports the toy module (which registers the dataset), then runs each command line given as a
# JSON list, printing a marker line before each and its exit code after.
TOY_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
import toy
from harness.cli import app
for args in json.loads(sys.argv[2]):
    print("=== " + args[0] + " " + args[1], flush=True)
    try:
        app(args, standalone_mode=True)
    except SystemExit as done:
        print("=== exit", done.code or 0, flush=True)
"""


def _harness_with_toy(folder: Path, *commands: list[str]) -> dict[str, tuple[int, str]]:
    """Run each `harness` command line in one fresh process that imported the toy dataset's module
    first; returns, per command's first two words, its exit code and what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", TOY_RUN, str(folder), json.dumps(commands)],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ran = re.findall(r"^=== (\S+ \S+)\n(.*?)^=== exit (\d+)$", done.stdout, re.S | re.M)
    return {name: (int(code), printed) for name, printed, code in ran}


def test_a_new_dataset_is_one_module_that_registers_it(tmp_path: Path) -> None:
    (tmp_path / "toy.py").write_text(textwrap.dedent(TOY_MODULE))
    experiment = tmp_path / "toy.yaml"
    experiment.write_text(
        textwrap.dedent(f"""
        name: toy
        dataset: {{name: toy, root: {tmp_path / "tree"}}}
        protocol: {{folds: 2, test_fraction: 0.25}}
        baselines: [{{name: cancernet, fixed: {{epochs_max: 1, batch_size: 16}}}}]
        output_dir: {tmp_path / "results"}
        """)
    )
    ran = _harness_with_toy(
        tmp_path,
        ["data", "synth", str(tmp_path / "tree"), "--dataset", "toy"],
        ["data", "index", "--dataset", "toy", "--root", str(tmp_path / "tree")],
        ["train", str(experiment), "--baseline", "cancernet"],
    )
    assert ran["data synth"][0] == 0 and "toy tree written" in ran["data synth"][1]
    assert ran["data index"][0] == 0
    assert "96 images of 8 patient groups {'busy': 48, 'calm': 48}" in ran["data index"][1]
    assert ran["train " + str(experiment)][0] == 0
    assert "best epoch 1" in ran["train " + str(experiment)][1]
