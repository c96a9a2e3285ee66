"""bench/sweep_scale.py --study-only: the harness's own searcher driven as Tune drives it, with no Ray
and no training, so the Optuna side of a 5,000-trial sweep is measured in minutes.

The searcher is built as the sweep's driver builds it (PerBaselineSearcher over the experiment's
spaces, the harness's default sampler and seed, the recipe point first, the storage opened by
`optuna_storage`), and its trials are marked started by StartStudyTrials as Tune's start callback
does. `concurrency` trials are in flight at once, each reporting one epoch in turn: every result
through `on_trial_result` but the last, which reaches `on_trial_complete` only (as Ray 2.60 passes a
result its scheduler answers STOP to, or a finished trial's last). The objective is synthetic (a
fixed function of the point, rising with the epoch); trials stop as ASHA stops them: at each rung
(epochs grace * rf^k below max) a trial goes on only when its objective is in the top 1/rf of the
rung's so far.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from harness.config import ExperimentConfig
    from harness.sweep._search import PerBaselineSearcher, StartStudyTrials


@dataclass
class StudyRun:
    """What one study-only run measured: per-call latencies in seconds, in call order, and the
    process's CPU seconds at the start and as each trial ended."""

    asks: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    results: list[float] = field(default_factory=list)
    tells: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass
class _Trial:
    """A Ray trial as the start callback sees it: an id and its config."""

    trial_id: str
    config: dict[str, Any]
    epoch: int = 0


def objective(point: dict[str, Any], epoch: int) -> float:
    """Return the synthetic objective of `point` at `epoch`: a fixed draw in [0, 1) per point, plus
    0.1 per epoch (stable across processes, unlike hash())."""
    drawn = zlib.crc32(repr(sorted(point.items())).encode()) % 1000 / 1000
    return drawn + 0.1 * epoch


class _Asha:
    """ASHA's stopping rule for the maximised objective: rungs at `grace` * `rf`^k epochs below `max_t`."""

    def __init__(self, max_t: int, grace: int, rf: int) -> None:
        self.max_t, self.rf = max_t, rf
        self.rungs: dict[int, list[float]] = {}
        rung = grace
        while rung < max_t:
            self.rungs[rung] = []
            rung *= rf

    def stops(self, epoch: int, value: float) -> bool:
        """Return whether a trial that reached `epoch` with `value` stops there (its last epoch)."""
        if epoch >= self.max_t:
            return True
        seen = self.rungs.get(epoch)
        if seen is None:
            return False
        # Ray's ASHA: the cutoff of the values the rung saw before this one, then this one recorded.
        cutoff = float(np.nanpercentile(seen, (1 - 1 / self.rf) * 100)) if seen else None
        seen.append(value)
        return cutoff is not None and value < cutoff


def build(config: ExperimentConfig) -> tuple[PerBaselineSearcher, StartStudyTrials]:
    """Return the searcher and the start callback of a sweep of `config`, built as the driver builds them."""
    from harness.sweep._search import StartStudyTrials, start_points
    from harness.sweep._tuner import searcher_of

    prefix = f"{config.name}/study-only"
    starts = {name: start_points(space, []) for name, space in config.baseline_spaces().items()}
    searcher = searcher_of(config, prefix, starts)
    return searcher, StartStudyTrials(config.resolved_optuna_storage(), prefix)


def _timed(into: list[float], call: Any, *args: Any) -> Any:
    started = time.perf_counter()
    result = call(*args)
    into.append(time.perf_counter() - started)
    return result


def drive(config: ExperimentConfig, concurrency: int) -> StudyRun:
    """Drive a fresh searcher of `config` through all its trials, `concurrency` at a time; returns
    what it measured."""
    from harness.sweep._keys import DONE_KEY, EPOCH_KEY
    from harness.sweep._search import Searcher

    searcher, starting = build(config)
    search = config.search
    asha = _Asha(search.max_epochs, search.grace_period, int(search.reduction_factor))
    run, flight, asked = StudyRun(), deque[_Trial](), 0
    run.cpu.append(time.process_time())
    started = time.perf_counter()
    while True:
        while len(flight) < concurrency:
            trial_id = f"t{asked:05d}"
            suggestion = _timed(run.asks, searcher.suggest, trial_id)
            if suggestion == Searcher.FINISHED:
                run.asks.pop()  # the call that says the budget is spent is not an ask
                break
            asked += 1
            trial = _Trial(trial_id, suggestion)
            _timed(run.starts, starting.on_trial_start, 0, [], trial)
            flight.append(trial)
        if not flight:
            break
        trial = flight.popleft()
        trial.epoch += 1
        point = {k: v for k, v in trial.config.items() if k != "baseline"}
        value = objective(point, trial.epoch)
        stop = asha.stops(trial.epoch, value)
        result = {"objective": value, EPOCH_KEY: trial.epoch, DONE_KEY: float(trial.epoch >= search.max_epochs)}
        if stop:
            _timed(run.tells, searcher.on_trial_complete, trial.trial_id, result)
            run.cpu.append(time.process_time())
        else:
            _timed(run.results, searcher.on_trial_result, trial.trial_id, result)
            flight.append(trial)
    run.wall_s = time.perf_counter() - started
    return run


def cpu_ends(cpu: list[float]) -> dict[str, float]:
    """Return the CPU seconds per trial over the first and the last 10% of trials to end, from the
    process's CPU time at the start and as each trial ended."""
    ended = len(cpu) - 1
    tenth = max(1, ended // 10)
    return {"first": (cpu[tenth] - cpu[0]) / tenth, "last": (cpu[-1] - cpu[-1 - tenth]) / tenth}


def storage_bytes(url: str) -> int:
    """Return the bytes the Optuna storage at `url` takes: a SQLite or journal file's size, a
    PostgreSQL database's (pg_database_size)."""
    from harness.locking import journal_path, sqlite_path

    path = journal_path(url) or sqlite_path(url)
    if path is not None:
        return Path(path).stat().st_size
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sqlalchemy.text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        engine.dispose()
