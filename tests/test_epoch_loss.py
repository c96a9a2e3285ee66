import math

import numpy as np
import torch

from harness.epoch_loss import EpochLoss


def _losses(n: int, seed: int = 0) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=torch.float32) for v in np.random.default_rng(seed).uniform(0.1, 3.0, n)]


def test_the_mean_is_exactly_what_reading_every_step_sums() -> None:
    losses, sizes = _losses(70), [8] * 69 + [5]
    tally = EpochLoss(read_every=32)
    for step, (loss, size) in enumerate(zip(losses, sizes), 1):
        assert tally.add(step, loss, size) is None
    assert tally.read() is None
    total = 0.0
    for loss, size in zip(losses, sizes):
        total += float(loss) * size
    assert tally.mean == total / sum(sizes)  # bit for bit: a CPU run logs what it logged before


def test_losses_stay_unread_until_a_block_is_full() -> None:
    tally = EpochLoss(read_every=4)
    for step, loss in enumerate(_losses(3), 1):
        tally.add(step, loss, 2)
    assert tally.mean == 0.0
    tally.add(4, torch.tensor(1.0), 2)
    assert tally.mean > 0.0


def test_the_first_non_finite_loss_is_named_by_its_step_and_value() -> None:
    tally = EpochLoss(read_every=8)
    values = [1.0, 2.0, 0.5, math.inf, math.nan, 1.0]
    found = [tally.add(step, torch.tensor(v), 4) for step, v in enumerate(values, 1)]
    assert found == [None] * 6  # the block of 8 is not full yet
    assert tally.read() == (4, math.inf)
    assert tally.mean == (1.0 + 2.0 + 0.5) * 4 / 12


def test_a_full_block_reports_a_nan_as_soon_as_it_is_read() -> None:
    tally = EpochLoss(read_every=2)
    assert tally.add(1, torch.tensor(1.0), 1) is None
    step, value = tally.add(2, torch.tensor(math.nan), 1)
    assert step == 2 and math.isnan(value)
