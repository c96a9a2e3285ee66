"""The per-image path with DataLoader worker processes: the same images and labels per epoch as
without workers, a different augmentation stream per worker, reproducible for a given seed."""

from __future__ import annotations

import numpy as np
import torch

from harness.config import ComputeSpec, TrainParams
from harness.data.dataset import ImageDataset
from harness.data.transforms import build_transform
from harness.train import _loader, loader_workers

N = 64


def _dataset() -> ImageDataset:
    """N copies of one asymmetric image, each flipped and turned at random: the batches show which
    draw each image got."""
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(1, 16, 16, 3) % 251
    params = TrainParams(augment="dihedral", input_size=16)
    transform = build_transform(params, stored_hw=(16, 16), train=True, seed=0, keras=False)
    return ImageDataset(np.repeat(image, N, axis=0), np.arange(N), np.arange(N) % 2, transform)


def _epoch(workers: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(_loader(_dataset(), 1, shuffle=True, seed=seed, workers=workers))
    return torch.cat([b["image"] for b in batches]), torch.cat([b["label"] for b in batches])


def test_workers_draw_the_same_rows_in_the_same_order_as_the_main_process() -> None:
    _, alone = _epoch(0)
    _, with_workers = _epoch(2)
    torch.testing.assert_close(with_workers, alone)


def test_each_worker_draws_its_own_augmentation_and_a_seed_repeats_them() -> None:
    images, _ = _epoch(2)
    # Batches alternate between the two workers; had both kept the dataset's one seeded stream,
    # their sequences would be equal.
    first, second = images[0::2], images[1::2]
    assert not torch.equal(first, second)
    assert len({tuple(image.flatten()[:8].tolist()) for image in images}) > 1
    again, _ = _epoch(2)
    torch.testing.assert_close(again, images)


def test_auto_means_no_workers_on_the_cpu_and_the_trials_cpus_on_cuda() -> None:
    auto = ComputeSpec()
    assert loader_workers(auto, "cpu", threads=8) == 0
    assert [loader_workers(auto, "cuda", threads=t) for t in (1, 2, 8)] == [1, 2, 4]
    assert loader_workers(ComputeSpec(loader_workers=3), "cpu", threads=1) == 3
