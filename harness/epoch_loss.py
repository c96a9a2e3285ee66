"""An epoch's mean training loss, read from the device a block of steps at a time.

Reading a loss (`float(loss)`) makes the host wait for the device to finish every step queued
so far, so a read per step leaves a small model's GPU idle while the host queues the next step.
The losses are kept on the device and read together every READ_EVERY steps; the mean is summed
on the host in step order, in float64, exactly as reading each step would sum it.
"""

from __future__ import annotations

import math

import torch

READ_EVERY = 32  # steps between reads: a wait per 32 steps costs little, and bounds a diverged epoch's waste


class EpochLoss:
    """The batch-size-weighted mean of an epoch's training losses, and its first non-finite one."""

    def __init__(self, read_every: int = READ_EVERY) -> None:
        self._read_every = read_every
        self._pending: list[tuple[int, torch.Tensor, int]] = []
        self._total, self._seen = 0.0, 0

    def add(self, step: int, loss: torch.Tensor, size: int) -> tuple[int, float] | None:
        """Keep `loss` of `step` (a batch of `size`); returns (step, value) of the first non-finite
        loss once the block holding it is read, else None."""
        self._pending.append((step, loss.detach(), size))
        return self.read() if len(self._pending) >= self._read_every else None

    def read(self) -> tuple[int, float] | None:
        """Add every kept loss to the mean; returns (step, value) of the first non-finite one, None
        when all are finite."""
        if not self._pending:
            return None
        values = torch.stack([loss for _, loss, _ in self._pending]).tolist()
        pending, self._pending = self._pending, []
        for (step, _, size), value in zip(pending, values):
            if not math.isfinite(value):
                return step, value
            self._total += value * size
            self._seen += size
        return None

    @property
    def mean(self) -> float:
        """Return the mean loss over the steps read so far (0.0 before any)."""
        return self._total / max(self._seen, 1)
