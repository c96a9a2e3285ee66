"""SIGINT and SIGTERM end a sweep cleanly.

The first signal stops the search the way Tune stops on its own interrupt (it saves its state, so
`--resume` continues), or, outside the search, raises SweepInterrupted where the driver is; every
open run then ends KILLED with `interrupted=<signal>`. A second signal exits at once. SLURM sends
SIGTERM at a job's time limit, so both take the same path.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from harness import tracking
from harness.environment import environment

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SweepInterrupted(KeyboardInterrupt):
    """The sweep's driver received SIGINT or SIGTERM; `parent_run_id` is the sweep's run, once it
    has one."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.parent_run_id: str | None = None

    @property
    def exit_code(self) -> int:
        """Return the shell's exit code for death by this signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class Interrupts:
    """The driver's signal handler: remembers the first signal and acts on it (see the module)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.in_search = False

    def install(self) -> None:
        """Handle SIGINT and SIGTERM here (again: `ray.init` sets a SIGTERM handler of its own)."""
        for signum in SIGNALS:
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        # A tracking call waiting out a server that does not answer gives up now, not after the bound.
        tracking.stop_waiting()
        # Tune's own interrupt (SIGUSR1, which Tune always handles while it runs) ends its loop
        # after saving the experiment's state; before Tune installs it, SIGUSR1 would kill us.
        if self.in_search and signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):
            signal.raise_signal(signal.SIGUSR1)
            return
        raise SweepInterrupted(signum)

    def check(self) -> None:
        """Raise SweepInterrupted if a signal arrived (the search returns instead of raising)."""
        if self.received is not None:
            raise SweepInterrupted(self.received)


@contextmanager
def catching_interrupts() -> Iterator[Interrupts]:
    """Handle SIGINT and SIGTERM as above for the block (only in the main thread, where Python
    delivers signals); the previous handlers come back after it."""
    interrupts = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    # Tune's own SIGINT handler would print Ray's restore hint and swallow the first Ctrl-C.
    with environment({"TUNE_DISABLE_SIGINT_HANDLER": "1"}, override=True):
        interrupts.install()
        try:
            yield interrupts
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
