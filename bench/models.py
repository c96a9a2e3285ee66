"""Training throughput and peak memory of every baseline: the harness step against a bare loop.

Run: .venv/bin/python bench/models.py [--models a,b] [--steps N] [--rounds R] [--out DIR] [--smoke]
(--smoke: CancerNet, one step, one round, for the tests)

For each model, at its published input size with a batch of 4 on this CPU, two kinds of
training step are timed in fresh processes, interleaved over R rounds:
- harness: model(x) -> output dict -> the registry's loss (RoI masks where the loss reads them,
  the model's penalty) -> backward -> Adam step;
- bare: the same network's logits (timm module or plain torch forward) -> cross-entropy ->
  backward -> Adam step.
It prints images/s and peak RSS of each, and the ratio harness/bare of the median images/s, and
writes a long-format CSV under results/bench/ named after the hardware and torch version
(--figures PATH: also every figure at full precision, as JSON).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

from _figures import Figures, add_figures_option

BATCH = 4


def _batch(name: str):
    import torch

    import baselines

    entry = baselines.info(name)
    height, width = entry.input_size
    if entry.input_kind == "bag":
        rows, cols = height // 28, width // 28
        return torch.rand(BATCH, rows * cols, 3, 28, 28), None
    masks = (torch.rand(BATCH, 1, height, width) > 0.5).float() if entry.needs_roi else None
    return torch.randn(BATCH, 3, height, width), masks


def _bare_logits(model):
    """Return a function from input to logits that skips the harness's output dict and loss."""
    if hasattr(model, "net"):
        return model.net
    if hasattr(model, "trunk"):
        return lambda x: model.head(model.trunk.forward_features(x))[0]
    if hasattr(model, "forward_features") and not hasattr(model, "roi_head"):
        return lambda x: model.forward_head(model.forward_features(x))
    return lambda x: model(x)["logits"]


def measure(name: str, kind: str, steps: int) -> dict[str, float]:
    """Time `steps` training steps of one kind in this (fresh) process; returns images/s and peak MB."""
    import torch
    import torch.nn.functional as F

    import baselines
    from baselines.losses import build_loss

    torch.manual_seed(0)
    torch.set_num_threads(max(1, mp.cpu_count()))
    entry = baselines.info(name)
    model = baselines.create(name, num_classes=entry.published_classes).train()
    x, masks = _batch(name)
    y = torch.randint(0, entry.published_classes, (BATCH,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    if kind == "harness":
        loss_fn = build_loss(entry.loss)

        def step() -> None:
            loss = loss_fn(model(x), y, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        logits_of = _bare_logits(model)

        def step() -> None:
            loss = F.cross_entropy(logits_of(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    step()  # warm-up: allocator and kernel selection
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {
        "images_per_s": steps * BATCH / seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _in_fresh_process(name: str, kind: str, steps: int) -> dict[str, float]:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (name, kind, steps))


def main() -> None:
    import torch

    import baselines

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Probes take embeddings, not images: bench/probe_sweep.py measures them.
    images = [n for n in baselines.list() if baselines.info(n).input_kind != "embedding"]
    parser.add_argument("--models", default=",".join(images))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench"), help="folder of the CSV")
    parser.add_argument("--smoke", action="store_true", help="CancerNet, one step, one round (for the tests)")
    add_figures_option(parser)
    args = parser.parse_args()
    figures = Figures(args.figures)
    if args.smoke:
        args.models, args.steps, args.rounds = "cancernet", 1, 1
    rows = []
    print(
        f"{'model':<18}{'input':>12}{'harness img/s':>15}{'bare img/s':>12}{'ratio':>8}"
        f"{'harness MB':>12}{'bare MB':>10}"
    )
    for name in args.models.split(","):
        runs: dict[str, list[dict[str, float]]] = {"harness": [], "bare": []}
        for _ in range(args.rounds):
            for kind in ("harness", "bare"):
                runs[kind].append(_in_fresh_process(name, kind, args.steps))
        speed = {k: statistics.median(r["images_per_s"] for r in v) for k, v in runs.items()}
        peak = {k: max(r["peak_mb"] for r in v) for k, v in runs.items()}
        height, width = baselines.info(name).input_size
        ratio = speed["harness"] / speed["bare"]
        figures.record(
            "models",
            name,
            value={"input": f"{height}x{width}", "runs": runs, "images_per_s": speed, "peak_mb": peak, "ratio": ratio},
        )
        print(
            f"{name:<18}{f'{height}x{width}':>12}{speed['harness']:>15.2f}{speed['bare']:>12.2f}{ratio:>8.3f}"
            f"{peak['harness']:>12.0f}{peak['bare']:>10.0f}"
        )
        rows += [
            {
                "model": name,
                "variant": k,
                "input": f"{height}x{width}",
                "batch": BATCH,
                "images_per_s": speed[k],
                "peak_rss_mb": peak[k],
                "ratio_harness_over_bare": ratio,
            }
            for k in ("harness", "bare")
        ]
    out = args.out / f"models-{platform.machine()}-{mp.cpu_count()}cpu-torch{torch.__version__}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written {out}")
    figures.write()


if __name__ == "__main__":
    main()
