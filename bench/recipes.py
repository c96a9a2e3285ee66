"""Every IDC baseline's published recipe on the shared IDC sample, epoch by epoch, beside the floors.

Run: .venv/bin/python bench/recipes.py [--baselines cancernet,idc_cnn|all] [--epochs 5]
     [--semantics source|torch] [--bn-recalibration/--no-bn-recalibration] [--diagnose] [--smoke]

The baselines, their pins and the protocol are those of experiments/idc_comparison.yaml (5 patient
folds, 20 % test patients, seed 0), read from ../shared/data/idc_sample. Each baseline trains its
recipe with the harness's own `fit` (no early stopping) on the search fold; after each epoch the
bench prints validation accuracy, AUC and the share of the most frequent prediction, beside the two
floors (majority, colour_forest) fitted on the same fold.

`--diagnose` adds, per epoch, what explains a collapse (issue 13): the model's predictions on the
validation fold in evaluation mode (as trained, and after recalibrating BatchNorm on training
batches with dropout on or off) against its training-mode predictions (batch statistics, dropout
on or off), and each BatchNorm's running statistics against the statistics of its input with
dropout off and on. Every figure is measured on a copy of the reported model, with the random
streams forked, so the diagnosed run trains exactly as an undiagnosed one.

`--out` writes every figure as a long-format CSV. `--smoke` (1 baseline, 1 epoch, 4 patches per
patient) is what tests/test_bench_recipes.py runs.
"""

from __future__ import annotations

import argparse
import copy
import csv
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.table import Table

import baselines
from harness.bn_recalibration import RECALIBRATION_BATCHES, batchnorms, recalibrate_batchnorm
from harness.config import ExperimentConfig, load_experiment
from harness.data.cache import open_patch_cache
from harness.data.dataset import ImageDataset
from harness.data.manifest import read_manifest
from harness.data.normalise import batch_normaliser
from harness.data.prepare import PreparedData, load_or_index, prepare
from harness.data.splits import CV, read_split
from harness.data.transforms import build_transform
from harness.floors import FLOORS, fit_floor_fold, floor_features
from harness.metrics import classification_metrics
from harness.run_spec import RunSpec
from harness.train import EpochReport, fit

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "experiments" / "idc_comparison.yaml"
IDC_SAMPLE = REPO.parent / "shared" / "data" / "idc_sample"
CHEAP = "cancernet,idc_cnn"
SMOKE_PATCHES = 4
# Evaluation modes of --diagnose: (label, model mode, recalibration before it)
EVAL_MODES = (
    ("eval, as trained", "eval", None),
    ("eval, recalibrated dropout on", "eval", True),
    ("eval, recalibrated dropout off", "eval", False),
    ("train, dropout on", "train", True),
    ("train, dropout off", "train", False),
)


@dataclass
class Row:
    """One figure set of the bench: a floor or an epoch of a baseline in one prediction mode."""

    baseline: str
    epoch: int
    mode: str
    accuracy: float
    auc: float
    loss: float
    top_share: float
    top_class: int
    train_loss: float = float("nan")
    agree_train_dropout: float = float("nan")
    agree_train_no_dropout: float = float("nan")
    harness_accuracy: float = float("nan")
    harness_loss: float = float("nan")


@dataclass
class NormRow:
    """One BatchNorm at one epoch: its running statistics against its input's batch statistics."""

    baseline: str
    epoch: int
    layer: str
    live_channels: str
    var_ratio_off: float
    var_ratio_on: float
    mean_shift_off: float
    mean_shift_on: float
    dropout_var_gain: float


def bench_config(work: Path, names: list[str], args: argparse.Namespace) -> ExperimentConfig:
    """Return idc_comparison.yaml validated with the sample as root, `names` only, and the bench's budget."""
    data = yaml.safe_load(EXPERIMENT.read_text())
    data["dataset"].update(root=str(IDC_SAMPLE), allow_subset=True)
    listed = {b if isinstance(b, str) else b["name"]: b for b in data["baselines"]}
    unknown = sorted(set(names) - set(listed))
    if unknown:
        raise SystemExit(f"not an IDC baseline of {EXPERIMENT.name}: {', '.join(unknown)} (its: {', '.join(listed)})")
    data["baselines"] = [listed[n] for n in names]
    data["search"].update(max_epochs=args.epochs, grace_period=1)
    data["training"] = {
        "patience": args.epochs,
        "device": args.device,
        "semantics": args.semantics,
        "bn_recalibration": args.bn_recalibration,
    }
    data["resources"] = {"cpu": args.threads}
    data["output_dir"] = str(work)
    path = work / "recipes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_experiment(path)


def prepared_sample(config: ExperimentConfig, work: Path, patches_per_patient: int | None) -> PreparedData:
    """Index the sample (keeping a few patches per patient if asked), split it and pack its cache."""
    manifest, _ = load_or_index(config.dataset)
    if patches_per_patient:
        manifest = (
            manifest.groupby("patient_id", group_keys=False)
            .sample(frac=1.0, random_state=0)
            .groupby("patient_id")
            .head(patches_per_patient)
            .sort_index()
            .reset_index(drop=True)
        )
    return prepare(manifest, config.dataset, config.protocol, work / "_data")


def _summary(prob: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pred = prob.argmax(1)
    counts = np.bincount(pred, minlength=prob.shape[1])
    metrics = classification_metrics(labels, prob)
    # Unweighted cross-entropy, as the harness's evaluation reports it.
    loss = float(-np.log(np.clip(prob[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return {
        "accuracy": metrics["accuracy"],
        "auc": metrics["auc"],
        "loss": loss,
        "top_share": counts.max() / len(pred),
        "top_class": int(counts.argmax()),
    }


def floor_rows(data: PreparedData, fold: int, seed: int) -> list[Row]:
    """Return each floor's validation figures on `fold` (fitted on the other folds)."""
    manifest, _ = read_manifest(data.manifest_path)
    features, split = floor_features(open_patch_cache(data.cache_path)), read_split(data.split_path)
    rows = []
    for name in FLOORS:
        val = fit_floor_fold(name, features, manifest, split, fold, num_classes=len(data.class_names), seed=seed).val
        prob = val.predictions[[f"prob_{c}" for c in range(len(data.class_names))]].to_numpy()
        rows.append(Row(name, 0, "floor", **_summary(prob, val.predictions.label.to_numpy())))
    return rows


class Probe:
    """Measures, after each epoch of a fit, a copy of the reported model on the validation fold."""

    def __init__(self, spec: RunSpec, *, diagnose: bool) -> None:
        self.spec, self.diagnose = spec, diagnose
        split, (manifest, _) = read_split(spec.data.split_path), read_manifest(spec.data.manifest_path)
        images, labels = open_patch_cache(spec.data.cache_path), manifest.label.to_numpy()
        hw = tuple(images.shape[1:3])
        p, keras = spec.params, spec.keras
        # Validation images in a fixed shuffled order, so that training-mode batches mix patients
        # as training batches do; training images through the training augmentation.
        rng = np.random.default_rng(spec.seed)
        self.val = ImageDataset(
            images,
            rng.permutation(split.rows(split=CV, fold=spec.fold)),
            labels,
            build_transform(p, stored_hw=hw, train=False, keras=keras),
        )
        self.train = ImageDataset(
            images,
            split.rows(split=CV, exclude_fold=spec.fold),
            labels,
            build_transform(p, stored_hw=hw, train=True, seed=spec.seed, keras=keras),
        )
        self.normalise = batch_normaliser(p.normalisation, "cpu")
        self.model = baselines.create(
            spec.baseline, num_classes=spec.num_classes, semantics=spec.training.semantics, **spec.model_kwargs
        )
        self.rows: list[Row] = []
        self.norms: list[NormRow] = []

    def _batches(self, dataset: ImageDataset, order: np.ndarray):
        """Yield normalised image batches of the run's batch size (near-equal sizes, none of one image)."""
        for chunk in np.array_split(order, max(1, round(len(order) / self.spec.params.batch_size))):
            yield self.normalise(torch.stack([dataset[int(i)]["image"] for i in chunk]))

    @torch.no_grad()
    def _probabilities(self, model: torch.nn.Module, *, train: bool, dropout: bool) -> np.ndarray:
        model = copy.deepcopy(model).train(train)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                module.train(train and dropout)
        logits = [model(x)["logits"] for x in self._batches(self.val, np.arange(len(self.val)))]
        return torch.softmax(torch.cat(logits).float(), 1).numpy()

    def _recalibrated(self, model: torch.nn.Module, *, dropout: bool) -> torch.nn.Module:
        model = copy.deepcopy(model)
        self.train.transform.set_random_seed(self.spec.seed)
        order = np.random.default_rng(self.spec.seed).permutation(len(self.train))
        batches = self._batches(self.train, order[: RECALIBRATION_BATCHES * self.spec.params.batch_size])
        recalibrate_batchnorm(model, batches, dropout=dropout)
        return model

    def __call__(self, entry: EpochReport) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(self.spec.seed)
            self.model.load_state_dict(entry.snapshot().model)
            labels = self.val.labels
            prob = self._probabilities(self.model, train=False, dropout=False)
            common = dict(baseline=self.spec.baseline, epoch=entry.epoch, train_loss=entry.train_loss)
            row = Row(
                mode=EVAL_MODES[0][0],
                harness_accuracy=entry.val["accuracy"],
                harness_loss=entry.val["loss"],
                **common,
                **_summary(prob, labels),
            )
            self.rows.append(row)
            if self.diagnose:
                self._diagnose(row, prob, labels)

    def _diagnose(self, row: Row, prob: np.ndarray, labels: np.ndarray) -> None:
        """Add the other prediction modes' rows, every mode's agreement with training mode, and the
        BatchNorm rows of this epoch."""
        recalibrated = {dropout: self._recalibrated(self.model, dropout=dropout) for dropout in (True, False)}
        probs = {row.mode: prob}
        for label, mode, dropout in EVAL_MODES[1:]:
            model = self.model if mode == "train" else recalibrated[dropout]
            probs[label] = self._probabilities(model, train=mode == "train", dropout=dropout)
        on, off = probs["train, dropout on"].argmax(1), probs["train, dropout off"].argmax(1)
        common = dict(baseline=row.baseline, epoch=row.epoch, train_loss=row.train_loss)
        for label, p in probs.items():
            target = row if label == row.mode else Row(mode=label, **common, **_summary(p, labels))
            target.agree_train_dropout = float((p.argmax(1) == on).mean())
            target.agree_train_no_dropout = float((p.argmax(1) == off).mean())
            if target is not row:
                self.rows.append(target)
        self.norms += norm_rows(self.model, recalibrated[False], recalibrated[True], common)


def norm_rows(
    trained: torch.nn.Module, undropped: torch.nn.Module, dropped: torch.nn.Module, common: dict
) -> list[NormRow]:
    """Return per BatchNorm: the running variance over the input's variance with dropout off and on
    (geometric mean over channels), the running mean's distance from the input's mean in input
    standard deviations (median over channels), and the input variance dropout adds (on over off).
    Channels whose input is constant (dead ReLU units) are left out."""
    off, on = batchnorms(undropped), batchnorms(dropped)
    rows = []
    for name, bn in batchnorms(trained).items():
        var_off, var_on = off[name].running_var, on[name].running_var
        live = (var_off > 1e-12) & (var_on > 1e-12)
        mean, var = bn.running_mean[live], bn.running_var[live]
        var_off, var_on = var_off[live], var_on[live]

        rows.append(
            NormRow(
                baseline=common["baseline"],
                epoch=common["epoch"],
                layer=name,
                live_channels=f"{int(live.sum())}/{len(live)}",
                var_ratio_off=_gmean(var / var_off),
                var_ratio_on=_gmean(var / var_on),
                mean_shift_off=_median_shift(mean, off[name].running_mean[live], var_off),
                mean_shift_on=_median_shift(mean, on[name].running_mean[live], var_on),
                dropout_var_gain=_gmean(var_on / var_off),
            )
        )
    return rows


def _median_shift(mean: torch.Tensor, input_mean: torch.Tensor, input_var: torch.Tensor) -> float:
    return float(((mean - input_mean).abs() / input_var.sqrt()).median())


def _gmean(ratio: torch.Tensor) -> float:
    return float(ratio.log().mean().exp()) if len(ratio) else float("nan")


def _f(x: float) -> str:
    return "" if np.isnan(x) else f"{x:.3f}"


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...], lines: list[tuple[str, ...]]) -> Table:
    """Return a rich table of `lines`, the `left` columns left-aligned and the others right."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right")
    for line in lines:
        table.add_row(*line)
    return table


def print_tables(console: Console, rows: list[Row], norms: list[NormRow], title: str) -> None:
    """Print the per-epoch table (floors first) and, when diagnosed, the BatchNorm table."""
    columns = (
        "model",
        "epoch",
        "mode",
        "train loss",
        "val loss",
        "val acc",
        "val AUC",
        "top share (class)",
        "agree train+drop",
        "agree train-drop",
    )
    lines = [
        (
            r.baseline,
            str(r.epoch) if r.epoch else "",
            r.mode,
            _f(r.train_loss),
            _f(r.loss),
            _f(r.accuracy),
            _f(r.auc),
            f"{r.top_share:.3f} ({r.top_class})",
            _f(r.agree_train_dropout),
            _f(r.agree_train_no_dropout),
        )
        for r in rows
    ]
    console.print(_table(title, columns, ("model", "mode"), lines))
    if not norms:
        return
    columns = (
        "model",
        "epoch",
        "layer",
        "live channels",
        "var ratio, drop off",
        "var ratio, drop on",
        "mean shift, off",
        "mean shift, on",
        "input var on/off",
    )
    lines = [
        (
            n.baseline,
            str(n.epoch),
            n.layer,
            n.live_channels,
            _f(n.var_ratio_off),
            _f(n.var_ratio_on),
            _f(n.mean_shift_off),
            _f(n.mean_shift_on),
            _f(n.dropout_var_gain),
        )
        for n in norms
    ]
    title = (
        "BatchNorm running statistics against the batch statistics of its input (running var / input var: "
        "geometric mean over channels; |mean shift| in input s.d., median over channels)"
    )
    console.print(_table(title, columns, ("model", "layer"), lines))


def write_csv(path: Path, rows: list[Row], norms: list[NormRow], protocol: dict[str, str]) -> None:
    """Write every figure as one long-format CSV: one line per (model, epoch, mode[, layer], figure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["semantics", "bn_recalibration", "baseline", "epoch", "mode", "figure", "value"])
        for r in rows:
            for key, value in asdict(r).items():
                if key not in ("baseline", "epoch", "mode"):
                    writer.writerow([*protocol.values(), r.baseline, r.epoch, r.mode, key, value])
        for n in norms:
            for key, value in asdict(n).items():
                if key not in ("baseline", "epoch", "layer"):
                    writer.writerow([*protocol.values(), n.baseline, n.epoch, f"bn {n.layer}", key, value])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the bench's options; --smoke shrinks everything to one baseline, one epoch, few patches."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baselines", default=CHEAP, help=f"comma-separated, or 'all' (default {CHEAP})")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--semantics", choices=["source", "torch"], default="source")
    parser.add_argument("--bn-recalibration", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--diagnose", action="store_true")
    parser.add_argument("--patches-per-patient", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="long-format CSV of every figure")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.baselines, args.epochs, args.patches_per_patient = "cancernet", 1, SMOKE_PATCHES
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not IDC_SAMPLE.is_dir():
        raise SystemExit(f"IDC sample not found at {IDC_SAMPLE}")
    names = (
        [b["name"] if isinstance(b, dict) else b for b in yaml.safe_load(EXPERIMENT.read_text())["baselines"]]
        if args.baselines == "all"
        else args.baselines.split(",")
    )
    console = Console(width=160)
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(Path(tmp), names, args)
        data = prepared_sample(config, Path(tmp), args.patches_per_patient)
        fold = config.protocol.search_fold
        rows, norms = floor_rows(data, fold, config.protocol.seed), []
        for name in names:
            spec = RunSpec.build(config, data, name, fold=fold)
            probe = Probe(spec, diagnose=args.diagnose)
            fit(spec, probe)
            rows += probe.rows
            norms += probe.norms
        protocol = spec.logged_params()
    title = (
        f"IDC sample ({data.rows} patches, {data.patients} patients), validation fold {fold}; "
        f"semantics {protocol['semantics']}, bn_recalibration {protocol['bn_recalibration']}"
    )
    print_tables(console, rows, norms, title)
    if args.out is not None:
        write_csv(args.out, rows, norms, protocol)
        console.print(f"written {args.out}")


if __name__ == "__main__":
    main()
