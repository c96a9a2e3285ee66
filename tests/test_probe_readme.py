"""The README's encoder presets are the registry's, and its probe figures are what
bench/probe_sweep.py saved (docs/figures/probe-sweep.json)."""

from __future__ import annotations

import json

import baselines
from tests.conftest import REPO
from tools.probe_readme import BENCH, FIGURES, PRESETS, render_figures, render_presets


def _block(markers: tuple[str, str]) -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index(markers[0]) : text.index(markers[1]) + len(markers[1])]


def test_the_readmes_presets_are_the_registrys() -> None:
    block = _block(PRESETS)
    assert block == render_presets()
    for name in baselines.list_encoders():
        preset = baselines.encoder_preset(name)
        assert f"| `{name}` | `{preset.arch}` |" in block


def test_the_readmes_probe_figures_are_the_saved_ones() -> None:
    figures = json.loads(FIGURES.read_text())
    block = _block(BENCH)
    assert block == render_figures(figures)
    # The figures themselves, not only their rendering: the rates follow from the saved times.
    extraction, sweep = figures["extraction"], figures["sweep"]
    assert extraction["per_s"] == extraction["rows"] / extraction["seconds"]
    assert sweep["per_min"] == 60 * sweep["trials"] / sweep["span_s"]
    assert f"({extraction['per_s']:,.1f} embeddings/s)" in block
