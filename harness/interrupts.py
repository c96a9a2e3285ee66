"""SIGINT and SIGTERM end a command's runs KILLED (tagged `interrupted=<signal>`) instead of leaving
them RUNNING: `harness train` and `harness study leakage` raise Interrupted where they are, and a
sweep as follows.

The first signal stops the search the way Tune stops on its own interrupt (it saves its state, so
`--resume` continues), or, outside the search, raises Interrupted where the driver is; every
open run then ends KILLED with `interrupted=<signal>`. A second signal during the search stops it at
once, from Tune's last saved state, and the runs are still ended KILLED; once the runs are being
closed, one more signal exits at once and leaves them for `harness close-orphans`. SLURM sends
SIGTERM at a job's time limit, so both take the same path (outside a sweep, every signal raises).

Python drops an exception raised while a finaliser runs ("Exception ignored in ..."), so a signal
that lands there would be lost: the driver calls `check()` between its steps, which raises for any
signal received, whether or not its exception got through.
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


class Interrupted(KeyboardInterrupt):
    """The command received SIGINT or SIGTERM; `parent_run_id` is a sweep's run, once it has one."""

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
    """The driver's signal handler: remembers the first signal and acts on each (see the module)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.in_search = False
        self.stopping = False  # Interrupted was raised: the runs are being closed
        self._extra = 0  # signals after that

    def install(self) -> None:
        """Handle SIGINT and SIGTERM here (again: `ray.init` sets a SIGTERM handler of its own)."""
        for signum in SIGNALS:
            signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: object) -> None:
        if self.stopping:
            self._extra += 1
            if self._extra > 1:
                os._exit(128 + signum)
            _say("closing the sweep's runs; one more signal exits at once and leaves them RUNNING")
            return
        first = self.received is None
        if first:
            self.received = signum
            # A tracking call waiting out a server that does not answer gives up now, not after the bound.
            tracking.stop_waiting()
        # Tune's own interrupt (SIGUSR1, which Tune always handles while it runs) ends its loop
        # after saving the experiment's state; before Tune installs it, SIGUSR1 would kill us.
        if first and self.in_search and signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):
            _say("stopping once Tune has saved the sweep's state; a second signal stops at once")
            signal.raise_signal(signal.SIGUSR1)
            return
        self.raise_interrupted()

    def raise_interrupted(self) -> None:
        """Raise Interrupted for the first signal received; the runs are closed from here on."""
        assert self.received is not None
        self.stopping = True
        raise Interrupted(self.received)

    def check(self) -> None:
        """Raise Interrupted if a signal arrived (the search returns instead of raising, and an
        exception raised in a finaliser is dropped)."""
        if self.received is not None:
            self.raise_interrupted()


def _say(line: str) -> None:
    """Print `line` on stderr from a signal handler (no lock is taken: print's could deadlock)."""
    os.write(2, f"{line}\n".encode())


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
