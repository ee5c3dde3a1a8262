"""Errors that end `dictl` with exit status 2: bad arguments or configuration, reported without a traceback."""

from __future__ import annotations


class UsageError(Exception):
    """The request cannot be run as given; the message says why and how to fix it."""
