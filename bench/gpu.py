"""Training images/s of one trial on a GPU, per baseline, fp32 against bf16, and the total of
1, 2, 4 and 8 trials run as concurrent processes on the one GPU (what Ray's fractional GPUs
amount to), with the GPU's utilisation; "vs one alone" divides their total by one trial's rate.
A third table sets the harness's epoch loop, which reads the training loss once per block of
steps, against reading it every step (each read waits for the device).

A trial's GPU side as harness/train.py runs it: uint8 patches resident on the device, batches
index-selected and augmented there (harness.data.batched), normalised on the device, the model
(baselines, with its source's semantics) under autocast (harness.precision), channels-last, and the
recipe's optimiser family (Keras Adam for the Keras-seeded baselines), the loss read a block of
steps at a time (harness.epoch_loss). The images are random uint8
(the arithmetic does not depend on them); GuSA trains on its classification term alone.

It imports only torch, timm, numpy and those harness modules (no Ray, MLflow, pydantic or
albumentations), so it runs on a bare GPU machine with its own PyTorch: copy the repository and
run it with that Python.

Run: python bench/gpu.py                  (a CUDA device; about 5 minutes)
     python bench/gpu.py --smoke          (the CPU, one small case: a test runs it)
     ... --figures PATH                   (also every figure at full precision, as JSON)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when not installed
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _figures, also when run by runpy, not as a script

from _figures import Figures, add_figures_option  # noqa: E402

import baselines  # noqa: E402
from baselines.losses import build_loss  # noqa: E402
from harness.data.batched import BatchAugment, DeviceBatches  # noqa: E402
from harness.data.normalise import batch_normaliser  # noqa: E402
from harness.epoch_loss import READ_EVERY, EpochLoss  # noqa: E402
from harness.optim import KerasAdam  # noqa: E402
from harness.precision import autocast  # noqa: E402


@dataclass(frozen=True)
class Case:
    """One baseline's trial: its stored and input sizes, augmentation, normalisation and batch."""

    baseline: str
    stored_hw: tuple[int, int]
    input_hw: tuple[int, int]
    augment: str
    batch: int
    normalisation: str = "unit"
    classes: int = 2


CASES = [
    Case("cancernet", (50, 50), (48, 48), "pis", 128),
    Case("idc_cnn", (50, 50), (50, 50), "dihedral", 128),
    Case("resnet18", (50, 50), (50, 50), "dihedral", 128, "imagenet"),
    Case("densenet169", (224, 224), (224, 224), "flips", 32, "imagenet"),
    Case("gusa", (384, 512), (384, 512), "flips", 8, "unit", 4),
]
# --smoke: CancerNet's case on a batch of 4, which runs the same code as its batch of 128 (Keras'
# `pis` augmentation and optimiser, channels-last, autocast); a CPU without bf16 units takes
# seconds a step of 128 under bf16 autocast, and about 0.2 s a step of 4.
SMOKE_CASE = Case("cancernet", (50, 50), (48, 48), "pis", 4)
PACKED = ("cancernet", "resnet18")  # the trials a sweep packs several of on one GPU
PRECISIONS = ("fp32", "bf16")
STARTUP_SECONDS = 600  # the longest a packed trial may take to build its model and warm up


@dataclass
class Trial:
    """A trial's model, optimiser, loss, batches and normaliser on one device."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: object
    batches: DeviceBatches
    normalise: object
    autocast: object
    device: str


def build_trial(case: Case, precision: str, device: str, patches: int) -> Trial:
    """Return `case`'s trial on `device` over `patches` random uint8 images."""
    keras = baselines.uses_keras_semantics(case.baseline, "source")
    model = baselines.create(case.baseline, num_classes=case.classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = KerasAdam(model.parameters(), lr=1e-4) if keras else torch.optim.Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (patches, *case.stored_hw, 3), dtype=np.uint8)
    labels = rng.integers(0, case.classes, patches)
    augment = BatchAugment(case.augment, case.input_hw, keras=keras)
    batches = DeviceBatches(images, labels, augment, batch_size=case.batch, device=device, seed=0)
    return Trial(
        model=model,
        optimizer=optimizer,
        loss=build_loss("ce", keras=keras),
        batches=batches,
        normalise=batch_normaliser(case.normalisation, device, channels_last=True),
        autocast=autocast(precision, device),
        device=device,
    )


def _synchronise(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def train_for(trial: Trial, seconds: float, warmup_steps: int, read_every: int = READ_EVERY) -> tuple[int, float]:
    """Train `trial` for `warmup_steps` untimed, then for about `seconds`, reading the losses every
    `read_every` steps as harness/train.py does (harness.epoch_loss); returns the images trained in
    the timed part and its wall seconds."""
    trial.model.train()
    losses = EpochLoss(read_every)
    images, started, steps = 0, None, 0
    while True:
        for batch in trial.batches:
            if steps == warmup_steps:
                _synchronise(trial.device)
                started, images = time.perf_counter(), 0
            with trial.autocast():
                outputs = trial.model(trial.normalise(batch["image"]))
                loss = trial.loss(outputs, batch["label"].to(trial.device, non_blocking=True), None)
            trial.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trial.optimizer.step()
            steps += 1
            images += len(batch["label"])
            losses.add(steps, loss, len(batch["label"]))
            # The host's clock runs ahead of the device by the queued steps; the final wait counts them.
            if started is not None and time.perf_counter() - started >= seconds:
                _synchronise(trial.device)
                return images, time.perf_counter() - started


def _measured(images: int, seconds: float) -> dict[str, float]:
    """Return a timed window's images, seconds and their rate, images/s."""
    return {"images": images, "seconds": seconds, "rate": images / seconds}


def _rate(case: Case, precision: str, device: str, opts: dict, read_every: int = READ_EVERY) -> dict[str, float]:
    """Return the images, seconds and images/s of one freshly built trial of `case`, freeing its
    device memory after."""
    trial = build_trial(case, precision, device, opts["patches"])
    measured = _measured(*train_for(trial, opts["seconds"], opts["warmup"], read_every))
    del trial
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return measured


def loss_reads(case: Case, device: str, opts: dict) -> dict[str, dict[str, float]]:
    """Return one bf16 trial's images, seconds and images/s of `case` reading its loss every step
    ("every_step"), and every READ_EVERY steps ("blocked", the harness's epoch loop)."""
    return {"every_step": _rate(case, "bf16", device, opts, read_every=1), "blocked": _rate(case, "bf16", device, opts)}


def _gpu_utilisation(stop: threading.Event, samples: list[float]) -> None:
    """Append nvidia-smi's GPU utilisation (percent) every half second until `stop`."""
    while not stop.wait(0.5):
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0 and done.stdout.strip():
            samples.append(float(done.stdout.split()[0]))


def _utilisation_sampler() -> tuple[threading.Event, list[float], threading.Thread | None]:
    stop, samples = threading.Event(), []
    if shutil.which("nvidia-smi") is None:
        return stop, samples, None
    thread = threading.Thread(target=_gpu_utilisation, args=(stop, samples), daemon=True)
    thread.start()
    return stop, samples, thread


def _packed_worker(case: Case, precision: str, device: str, opts: dict, ready, results) -> None:
    torch.set_num_threads(opts["threads"])
    trial = build_trial(case, precision, device, opts["patches"])
    train_for(trial, 0.0, opts["warmup"])  # compile kernels and fill caches before the start line
    ready.wait(timeout=STARTUP_SECONDS)
    results.put(train_for(trial, opts["seconds"], 0))


def packed(case: Case, precision: str, device: str, n: int, opts: dict) -> tuple[list[dict[str, float]], str]:
    """Return the images, seconds and images/s of each of `n` concurrent trial processes of `case`
    on `device`, and the mean GPU utilisation over their timed part ("n/a" without nvidia-smi)."""
    context = mp.get_context("spawn")
    ready, results = context.Barrier(n + 1), context.Queue()
    workers = [
        context.Process(target=_packed_worker, args=(case, precision, device, opts, ready, results)) for _ in range(n)
    ]
    for worker in workers:
        worker.start()
    ready.wait(timeout=STARTUP_SECONDS)  # a worker that dies while starting breaks the barrier
    stop, samples, sampler = _utilisation_sampler()
    done = [results.get(timeout=opts["seconds"] * 10 + STARTUP_SECONDS) for _ in workers]
    stop.set()
    for worker in [*workers, *([sampler] if sampler else [])]:
        worker.join()
    utilisation = f"{statistics.mean(samples):.0f}%" if samples else "n/a"
    return [_measured(images, seconds) for images, seconds in done], utilisation


def single(case: Case, device: str, opts: dict) -> dict[str, dict[str, float]]:
    """Return one trial's images, seconds and images/s of `case` per precision."""
    return {precision: _rate(case, precision, device, opts) for precision in PRECISIONS}


def _options(smoke: bool, device: str) -> dict:
    if smoke:
        # Every code path at its least: two batches of patches, one untimed step to warm up, and a
        # zero window (train_for times the one step after the warm-up); two packed trials, so that
        # the total sums several processes' rates (most of their time is importing torch and timm).
        return {"cases": [SMOKE_CASE], "packed": (2,), "patches": 8, "seconds": 0.0, "warmup": 1, "threads": 1}
    threads = 1 if torch.device(device).type == "cuda" else max(1, torch.get_num_threads())
    return {"cases": CASES, "packed": (1, 2, 4, 8), "patches": 4096, "seconds": 10.0, "warmup": 20, "threads": threads}


def main() -> None:
    """Print images/s per trial (fp32 and bf16) and of packed trials on one device."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the CPU, CancerNet, 2 packed trials, short windows")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    add_figures_option(parser)
    args = parser.parse_args()
    figures = Figures(args.figures)
    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    opts = _options(args.smoke, device)
    torch.set_num_threads(opts["threads"])
    cuda = torch.device(device).type == "cuda"
    name = figures.record("device", value=torch.cuda.get_device_name(device) if cuda else "CPU")
    seconds = figures.record("seconds", value=opts["seconds"])
    version = figures.record("torch", value=torch.__version__)
    print(f"device: {name}; torch {version}; {seconds:g} s per measurement")
    print("\n| baseline | input | batch | fp32 img/s | bf16 img/s | bf16/fp32 |\n|---|---|---:|---:|---:|---:|")
    for case in opts["cases"]:
        rates = single(case, device, opts)
        row = figures.record(
            "single",
            case.baseline,
            value={
                "input": "x".join(map(str, case.input_hw)),
                "batch": case.batch,
                **rates,
                "bf16_over_fp32": rates["bf16"]["rate"] / rates["fp32"]["rate"],
            },
        )
        print(
            f"| {case.baseline} | {row['input']} | {row['batch']} | {row['fp32']['rate']:,.0f} "
            f"| {row['bf16']['rate']:,.0f} | {row['bf16_over_fp32']:.2f} |",
            flush=True,
        )
    every = figures.record("read_every", value=READ_EVERY)
    print(f"\n| baseline | loss read every step, img/s | every {every} steps | ratio |\n|---|---:|---:|---:|")
    for case in [c for c in opts["cases"] if c.baseline in PACKED]:
        reads = loss_reads(case, device, opts)
        row = figures.record(
            "loss_reads",
            case.baseline,
            value={**reads, "ratio": reads["blocked"]["rate"] / reads["every_step"]["rate"]},
        )
        print(
            f"| {case.baseline} | {row['every_step']['rate']:,.0f} | {row['blocked']['rate']:,.0f} "
            f"| {row['ratio']:.2f} |",
            flush=True,
        )
    print("\n| baseline | precision | trials | total img/s | per trial | vs one alone | GPU util |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in [c for c in opts["cases"] if c.baseline in PACKED]:
        alone = figures.tree["single"][case.baseline]["bf16"]["rate"]
        for n in opts["packed"]:
            trials, utilisation = packed(case, "bf16", device, n, opts)
            total = sum(trial["rate"] for trial in trials)
            row = figures.record(
                "packed",
                case.baseline,
                str(n),
                value={
                    "precision": "bf16",
                    "trials": trials,
                    "total": total,
                    "per_trial": total / n,
                    "vs_one_alone": total / alone,
                    "gpu_util": utilisation,
                },
            )
            print(
                f"| {case.baseline} | {row['precision']} | {n} | {row['total']:,.0f} | {row['per_trial']:,.0f} "
                f"| {row['vs_one_alone']:.2f} | {row['gpu_util']} |",
                flush=True,
            )
    figures.write()


if __name__ == "__main__":
    main()
