"""The one exception type for bad user input; the CLI turns it into one line and exit code 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the user: a file, key or value, and what was expected."""
