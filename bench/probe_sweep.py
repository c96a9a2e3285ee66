"""Embeddings computed once, heads searched by the thousand: an encoder's extraction rate over a
dataset's stored images, head trials per minute through the harness's whole sweep (Ray Tune, Optuna
TPE, ASHA, an MLflow run and a checkpoint per trial) reading those cached embeddings, and, side by
side in the same run, one probe trial's fit on the cached embeddings against embedding its fold's
images once (what a trial reading pixels would pay at least once per epoch).

No real foundation-model weights exist here: the encoder is a random-initialised member of a
preset's family (default Phikon's ViT-B/16 in Hugging Face's key names, at the depth and width of
`--arch`), written to a local file in that preset's published key layout, so that loading and the
key mapping run as they would for the real file. Rates depend on the encoder's size, not its weights.

Run: PYTHONPATH=$PWD .venv/bin/python bench/probe_sweep.py [--root ../shared/data/idc_sample] [--trials 200]
     ... --device cuda         (extraction on a GPU, bf16; the sweep itself needs Ray and MLflow)
     ... --smoke               (a synthetic IDC tree, a toy encoder, 4 trials: a test runs it)
     ... --figures PATH        (also every figure at full precision, as JSON)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _figures import Figures, add_figures_option

BASELINE = "linear_probe"
# A ViT-B/16 trunk cut to 4 blocks at width 192: a small encoder that a 2-core machine embeds in minutes.
SMALL = {"depth": 4, "embed_dim": 192, "num_heads": 3}
# Head trials at once: one per core of the 2-core machine the figures come from.
CONCURRENT = 2
TOY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32}


def _experiment(root: Path, out: Path, weights: Path, args: argparse.Namespace, arch: dict[str, Any]) -> Path:
    path = out / "probe.yaml"
    fixed = {"encoder": args.encoder, "encoder_arch": arch, "epochs_max": args.epochs}
    path.write_text(
        yaml.safe_dump(
            {
                "name": "probe_sweep",
                "dataset": {"name": "idc", "root": str(root), "allow_subset": True},
                "protocol": {"folds": 3 if args.smoke else 5, "test_fraction": 0.2, "seed": 0},
                "baselines": [{"name": BASELINE, "pretrained": str(weights), "fixed": fixed}],
                "search": {
                    "trials": args.trials,
                    "max_epochs": args.epochs,
                    "grace_period": 1,
                    "sampler": "tpe",
                    "max_concurrent": CONCURRENT,
                    "retrain": "none",
                },
                "resources": {"cpu": 1},
                "training": {"patience": 3},
                "floors": [],
                "output_dir": str(out / "results"),
            }
        )
    )
    return path


def _extraction(config: Any, data: Any, device: str, batch_size: int) -> tuple[float, int]:
    """Return the seconds the embedding cache took to build and the rows it embedded."""
    from harness.embeddings import embedding_recipe, ensure_embeddings
    from harness.run_spec import RunSpec

    encoder = RunSpec.build(config, data, BASELINE, fold=0).encoder
    assert encoder is not None
    started = time.perf_counter()
    ensure_embeddings(data, embedding_recipe(data, encoder), device=device, batch_size=batch_size)
    return time.perf_counter() - started, data.rows


def _one_fit(config: Any, data: Any) -> tuple[float, int, int]:
    """Return the seconds of one probe fit (the recipe) on the cached embeddings, its epochs and
    the rows it embeds (training and validation)."""
    from harness.data.splits import CV, read_split
    from harness.run_spec import RunSpec
    from harness.train import fit

    spec = RunSpec.build(config, data, BASELINE, fold=0)
    started = time.perf_counter()
    result = fit(spec)
    seconds = time.perf_counter() - started
    split = read_split(data.split_path)
    return seconds, len(result.history), len(split.rows(split=CV))


def _trial_span(config: Any) -> tuple[int, float]:
    """Return the trial runs of the sweep and the seconds from the first one's start to the last one's end."""
    from harness import tracking

    tracker = tracking.tracker_for(config.resolved_tracking_uri())
    experiment = tracker.experiment_id(config.name, create=False)
    runs = tracker.client.search_runs(
        [experiment], filter_string=f"tags.{tracking.RUN_TYPE} = '{tracking.RunType.TRIAL}'", max_results=50_000
    )
    starts = [r.info.start_time for r in runs]
    ends = [r.info.end_time for r in runs if r.info.end_time]
    return len(runs), (max(ends) - min(starts)) / 1000


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="an IDC tree (default: a synthetic one)")
    parser.add_argument("--encoder", default="phikon", help="the preset whose family and key layout the file has")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=20, help="each head's epoch budget (ASHA stops earlier)")
    parser.add_argument("--device", default="cpu", help="where the embeddings are computed")
    parser.add_argument("--batch-size", type=int, default=64, help="images per extraction batch")
    parser.add_argument("--smoke", action="store_true", help="synthetic data, a toy encoder, 4 trials of 2 epochs")
    add_figures_option(parser)
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.epochs = 4, 2
    return args


def main() -> None:
    """Print the extraction rate, one fit on embeddings against embedding its images, and head trials per minute."""
    import baselines
    from harness.config import load_experiment
    from harness.data.datasets.idc import write_synthetic_idc
    from harness.experiment import set_up
    from harness.sweep import run_sweep

    args = _arguments()
    figures = Figures(args.figures)
    arch = figures.record("arch", value=TOY if args.smoke else SMALL)
    figures.record("encoder", value=args.encoder)
    figures.record("device", value=args.device)
    figures.record("concurrent", value=CONCURRENT)
    figures.record("data", value=f"`{args.root}`" if args.root else "a synthetic IDC tree")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        root = args.root or write_synthetic_idc(tmp / "idc", patients=8, seed=0)
        weights = baselines.write_random_encoder(args.encoder, tmp / f"{args.encoder}.safetensors", **arch)
        config = load_experiment(_experiment(root, tmp, weights, args, arch))
        data = set_up(config).data
        seconds, rows = _extraction(config, data, args.device, args.batch_size)
        rate = figures.record("extraction", value={"seconds": seconds, "rows": rows, "per_s": rows / seconds})
        print(f"extraction: {rows} images in {seconds:.1f} s on {args.device} ({rate['per_s']:,.1f} embeddings/s)")
        fit_s, epochs, fit_rows = _one_fit(config, data)
        pixels_s = epochs * fit_rows / rate["per_s"]
        one = figures.record(
            "one_fit",
            value={
                "seconds": fit_s,
                "epochs": epochs,
                "rows": fit_rows,
                "pixels_s": pixels_s,
                "ratio": pixels_s / fit_s,
            },
        )
        print(
            f"one {BASELINE} fit, {epochs} epochs on {fit_rows} embeddings: {fit_s:.2f} s; embedding those "
            f"images every epoch would take {pixels_s:.1f} s: {one['ratio']:.0f}x"
        )
        started = time.perf_counter()
        run_sweep(config)
        wall = time.perf_counter() - started
        trials, span = _trial_span(config)
        sweep = figures.record(
            "sweep",
            value={
                "trials": trials,
                "wall_s": wall,
                "span_s": span,
                "per_min": 60 * trials / span,
                "wall_per_min": 60 * trials / wall,
            },
        )
        print(
            f"head sweep: {trials} trials in {wall:.1f} s ({sweep['wall_per_min']:.1f} trials/min; "
            f"{sweep['per_min']:.1f} trials/min from the first trial's start to the last one's end)"
        )
    figures.write()


if __name__ == "__main__":
    main()
