"""The one exception type for bad user input, which the CLI turns into one line and exit code 2,
how to recognise the one environmental failure it reports the same way (a full disk), and the
tracking server gone for longer than the harness waits, which ends a command in one line too."""

from __future__ import annotations

import errno
from datetime import datetime


class InputError(Exception):
    """Bad input from the user: a file, key or value, and what was expected."""


# pyarrow's filesystem errors carry the errno in their message only, SQLite's in its own words.
_DISK_FULL_WORDS = ("No space left on device", "database or disk is full")


def disk_full(exc: BaseException) -> bool:
    """Return True when `exc`, an error it was raised from, or one a Ray wrapper carries (`cause`)
    says the disk, or a SQLite file on it, is full."""
    seen: set[int] = set()
    current: object = exc  # a Ray wrapper's `cause` may be anything
    while isinstance(current, BaseException) and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "errno", None) == errno.ENOSPC or any(words in str(current) for words in _DISK_FULL_WORDS):
            return True
        current = current.__cause__ or current.__context__ or getattr(current, "cause", None)
    return False


class TrackingUnreachable(Exception):
    """The MLflow tracking server at `uri` has failed every call since `since` (local time) for
    longer than the harness waits (HARNESS_TRACKING_OUTAGE_S); `reason` is the last failure's, in
    a few words. Nothing more can be written to the store until it answers again."""

    def __init__(self, uri: str, since: datetime, reason: str) -> None:
        super().__init__(f"tracking server {uri} unreachable since {since:%H:%M:%S} ({reason})")
        self.uri, self.since, self.reason = uri, since, reason

    def __reduce__(self) -> tuple[type[TrackingUnreachable], tuple[str, datetime, str]]:
        # A trial raises it in a Ray worker: the driver gets a pickled copy.
        return type(self), (self.uri, self.since, self.reason)
