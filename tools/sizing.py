"""docs/cluster.md's "Sizing" section, computed from the figures the benches saved
(docs/figures/sweep-scale.json from `bench/sweep_scale.py --figures`, docs/figures/optuna-scale.json
from `bench/sweep_scale.py --study-only --figures`, docs/figures/gpu-nvidia-h200.json from
`bench/gpu.py --figures`), so the text says what was measured and a test checks it still does.
A new full run of the scale bench saved over the JSON file regenerates the section.

usage: python tools/sizing.py           (rewrite the block in docs/cluster.md)
       python tools/sizing.py --check   (exit 1 when docs/cluster.md's block differs)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"
DOC = REPO / "docs" / "cluster.md"
BEGIN, END = "<!-- sizing: tools/sizing.py writes this block -->", "<!-- /sizing -->"
# 001's Table I: its experiment file (models, folds, rungs) with a 32-trial search per model on
# BACH part A's 400 images (the published count).
TABLE_I, TABLE_I_TRIALS, BACH_IMAGES = REPO / "experiments" / "bach_gusa.yaml", 32, 400
ASK_LIMIT_MS, ASK_SIZE = 100.0, 5000


def _largest(scale: dict) -> tuple[int, dict]:
    size = max(scale["sizes"], key=int)
    return int(size), scale["sizes"][size]


def _driver(scale: dict) -> list[str]:
    size, row = _largest(scale)
    cpu = row["search_cpu_s_per_trial"]
    spans = ", ".join(f"{minutes} min: {minutes * 60 / cpu:,.0f}" for minutes in (1, 10, 60))
    sizes = ", ".join(f"{int(n):,}" for n in scale["sizes"])
    return [
        f"Measured sizes: {sizes} trials ({scale['concurrency']} at once, {scale['epochs']} epochs each). At "
        f"{size:,} trials the driver spent {cpu:.4f} CPU s per trial over the search "
        f"({row['cpu_s_per_trial']:.4f} s over the whole sweep, data and leaderboard included), peak RSS "
        f"{row['peak_rss_mb']:,.0f} MB. One driver core therefore keeps up with trials ending at "
        f"{1 / cpu:,.1f} per second: concurrent trials one driver sustains, by trial length, {spans}.",
    ]


def overhead(scale: dict) -> tuple[int, float] | None:
    """Return the largest size run on both sides and the harness's overhead there, in seconds of a
    trial slot per trial; None when no size ran a bare Tuner."""
    both = [int(n) for n, r in scale["sizes"].items() if "ratio" in r]
    if not both:
        return None
    row = scale["sizes"][str(max(both))]
    return max(both), (row["harness_s"] - row["bare_s"]) * scale["concurrency"] / max(both)


def _ratio(scale: dict) -> list[str]:
    measured = overhead(scale)
    if measured is None:
        return ["No bare Tuner was run beside the harness in these figures."]
    text = "; ".join(f"{int(n):,} trials {r['ratio']:.2f}" for n, r in scale["sizes"].items() if "ratio" in r)
    size, seconds = measured
    return [
        f"Harness over a bare Tuner on the same points: {text}; at {size:,} trials that is {seconds:.2f} s of a "
        "trial slot per trial (tracking, checkpoints, the searcher, the leaderboard).",
    ]


def ask_growth(row: dict, size: int) -> tuple[float, float, float | None]:
    """Return the ask p99 (ms) over the first and the last 10% of a study of `size` trials, and the
    study size at which it would reach ASK_LIMIT_MS growing as it grew between them (None: it did not grow)."""
    first, last = row["latency"]["ask"]["first"]["p99_ms"], row["latency"]["ask"]["last"]["p99_ms"]
    slope = (last - first) / (0.9 * size)  # ms per trial, between the middles of the two tenths
    reach = None if slope <= 0 else size * 0.95 + (ASK_LIMIT_MS - last) / slope
    return first, last, reach


def _stores(scale: dict) -> list[str]:
    size, row = _largest(scale)
    first, last, reach = ask_growth(row, size)
    if last >= ASK_LIMIT_MS:
        when = f"already past {ASK_LIMIT_MS:g} ms"
    elif reach is None:
        when = "it did not grow"
    else:
        when = f"growing so, it would pass {ASK_LIMIT_MS:g} ms near {reach:,.0f} trials in one study"
    probe, driver = row["latency"]["mlflow_probe"], row["latency"]["mlflow_driver"]
    lines = [
        f"Optuna ask p99 at {size:,} trials: {first:.1f} ms over the first 10%, {last:.1f} ms over the last "
        f"({when}; TPE samples its first 10 trials at random, which makes the first tenth of a small study "
        f"cheaper). MLflow, while trials ended at {row['trials_per_min']:,.1f} a minute: "
        f"a probe logging one metric from the driver waited {probe['p50_ms']:.1f}/{probe['p99_ms']:.1f} ms "
        f"(p50/p99), the driver's own {driver['calls']:,} calls {driver['p50_ms']:.1f}/{driver['p99_ms']:.1f} ms.",
    ]
    if "storages" in scale:
        lines += ["", f"Optuna storages at {scale['storages_size']:,} trials:", ""]
        lines += ["| storage | wall s | ask p99, last 10% | tell p99, last 10% |", "|---|---:|---:|---:|"]
        for kind, measured in scale["storages"].items():
            latency = measured["latency"]
            lines.append(
                f"| {kind} | {measured['harness_s']:,.1f} | {latency['ask']['last']['p99_ms']:.1f} ms "
                f"| {latency['tell']['last']['p99_ms']:.1f} ms |"
            )
    return lines


def _ms(p: dict) -> str:
    return f"{p['p50_ms']:.1f}/{p['p99_ms']:.1f}"


def _optuna(figures: dict) -> list[str]:
    """Return the study-only table (the harness's searcher alone, per storage and study size) and the
    ask target's verdict per storage run at ASK_SIZE trials."""
    study = figures["study_only"]
    lines = [
        f"The harness's searcher alone (`--study-only`: no Ray, no training, {study['concurrency']} trials in "
        "flight, CancerNet's space, TPE), per storage and study size; ask and tell in ms (p50/p99) over the "
        "first and the last 10% of the study, the driver's CPU per trial over the same tenths:",
        "",
        "| storage | trials | ask, first 10% | ask, last 10% | tell, last 10% | CPU ms/trial, first / last | MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, rows in study.items():
        if kind == "concurrency":
            continue
        for size, row in sorted(rows.items(), key=lambda item: int(item[0])):
            cpu = row["cpu_s_per_trial"]
            lines.append(
                f"| {kind} | {int(size):,} | {_ms(row['ask']['first'])} | {_ms(row['ask']['last'])} "
                f"| {_ms(row['tell']['last'])} | {cpu['first'] * 1e3:.1f} / {cpu['last'] * 1e3:.1f} "
                f"| {row['storage_mb']:.1f} |"
            )
    kinds = [kind for kind in study if kind != "concurrency"]
    judged = figures.get("study_only_targets", {})
    verdicts = [
        f"{judged[k]} with {k} ({study[k][str(ASK_SIZE)]['ask']['last']['p99_ms']:.1f} ms)"
        for k in kinds
        if k in judged
    ]
    unrun = [k for k in kinds if k not in judged]
    lines += [
        "",
        f"Target, Optuna ask p99 < {ASK_LIMIT_MS:g} ms at {ASK_SIZE:,} trials (last 10%): "
        + "; ".join(verdicts or ["not measured"])
        + (f"; {', '.join(unrun)} not run at {ASK_SIZE:,} trials." if unrun else "."),
    ]
    return lines


def asha_epochs(grace: int, eta: float, max_t: int) -> float:
    """Return the mean epochs an ASHA trial trains when each rung keeps 1/eta of those reaching it."""
    epochs, done, share, rung = 0.0, 0, 1.0, grace
    while True:
        epochs += share * (rung - done)
        if rung >= max_t:
            return epochs
        done, share, rung = rung, share / eta, min(int(rung * eta), max_t)


def _table_one(scale: dict, gpu: dict) -> list[str]:
    experiment = yaml.safe_load(TABLE_I.read_text())
    search, protocol, models = experiment["search"], experiment["protocol"], len(experiment["baselines"])
    rate = gpu["single"]["gusa"]["bf16"]["rate"]
    seen = BACH_IMAGES * (1 - protocol["test_fraction"])  # each epoch trains and validates on these
    epoch_s = seen / rate
    mean = asha_epochs(search["grace_period"], search["reduction_factor"], search["max_epochs"])
    runs = models * (TABLE_I_TRIALS + protocol["folds"])
    gpu_s = models * (TABLE_I_TRIALS * mean + protocol["folds"] * search["max_epochs"]) * epoch_s
    measured = overhead(scale)
    per_run = 0.0 if measured is None else measured[1]
    said = (
        "no harness overhead (none measured)"
        if measured is None
        else (f"{per_run:.2f} s of harness overhead per run (measured on CPU at {measured[0]:,} trials)")
    )
    hours = (gpu_s + runs * per_run) / 8 / 3600
    return [
        f"001 Table I ({models} models x {protocol['folds']} folds + a {TABLE_I_TRIALS}-trial search each, "
        f"`{TABLE_I.relative_to(REPO)}`) on 8 GPUs, an estimate: {seen:.0f} images an epoch at GuSA's "
        f"{rate:,.0f} img/s ({gpu['device']}, bf16, `bench/gpu.py`; every model assumed as fast, validation "
        f"counted at the training rate) is {epoch_s:.1f} s an epoch; ASHA (grace {search['grace_period']}, "
        f"eta {search['reduction_factor']:g}, {search['max_epochs']} epochs) trains {mean:.1f} epochs a trial on "
        f"average and each fold {search['max_epochs']}; with {said}, {runs} runs one per GPU take about "
        f"{hours:.1f} h.",
    ]


def render(scale: dict, gpu: dict, study: dict) -> str:
    """Return docs/cluster.md's sizing block from the scale bench's (whole path and searcher alone)
    and the GPU bench's saved figures."""
    return "\n".join(
        [
            BEGIN,
            *_driver(scale),
            "",
            *_ratio(scale),
            "",
            *_stores(scale),
            "",
            *_optuna(study),
            "",
            *_table_one(scale, gpu),
            END,
        ]
    )


def _current() -> str:
    scale: dict[str, Any] = json.loads((FIGURES / "sweep-scale.json").read_text())
    gpu: dict[str, Any] = json.loads((FIGURES / "gpu-nvidia-h200.json").read_text())
    study: dict[str, Any] = json.loads((FIGURES / "optuna-scale.json").read_text())
    return render(scale, gpu, study)


def main() -> None:
    """Rewrite docs/cluster.md's sizing block, or with --check exit 1 when it differs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the block is not what it would write")
    args = parser.parse_args()
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    wanted = _current()
    if args.check:
        sys.exit(0 if text[start:end] == wanted else 1)
    DOC.write_text(text[:start] + wanted + text[end:])


if __name__ == "__main__":
    main()
