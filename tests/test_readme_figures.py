"""The README's GPU figures are what the benches saved on the GPU machine (docs/figures/)."""

from __future__ import annotations

import json

from tests.conftest import REPO
from tools.readme_figures import BEGIN, END, FIGURES, render


def test_the_readmes_gpu_block_is_rendered_from_the_saved_figures() -> None:
    text = (REPO / "README.md").read_text()
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    gpu = json.loads((FIGURES / "gpu-nvidia-h200.json").read_text())
    loader = json.loads((FIGURES / "loader-nvidia-h200.json").read_text())
    assert block == render(gpu, loader)
    # The figures themselves, not only their rendering: one row checked against the raw JSON.
    densenet = gpu["single"]["densenet169"]
    assert f"| densenet169 | 224x224, 32 | {densenet['fp32']['rate']:,.0f} | {densenet['bf16']['rate']:,.0f} |" in block
