"""Errors that are the user's to fix.

Anything raised as a `UsageError` is reported by the CLI as one line (problem and fix)
with exit code 2 and no traceback. Everything else is a bug and keeps its traceback.
"""


class UsageError(Exception):
    """Bad input: an unknown name, an invalid value, a malformed spec."""


class DataUnavailable(UsageError):
    """A dataset that is neither on disk nor downloadable (offline)."""
