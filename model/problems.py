"""One finding about a config file: where (dotted path), what, and how to fix it.

Shared by the cross-field rules (`model/rules.py`) and each engine's own rules (`model/engines/`); the loader
turns the path into file:line.

A file with type or schema errors still gets its rules run, on what parsed (`model/partial.py`): a setting that
failed is unusable, and a rule that reads one raises `UnusableInput` (only inside `guarding()`). `skip_unusable`
keeps the problems such a rule found before that read and skips the rest of it, so one bad value never turns into a
follow-on error from a rule that would have judged a stand-in.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterable, Iterator


class ConfigError(Exception):
    """A config file cannot be used; the message lists every problem."""


@dataclass(frozen=True)
class Problem:
    """One rule violation (or, from `rules.warnings`, one warning): where, what, and how to fix it.

    line: set only where the path alone cannot say it (the second of two duplicate keys).
    """

    path: str
    message: str
    fix: str
    line: int | None = None


class UnusableInput(Exception):
    """A rule read a setting that failed validation; the rule cannot judge it."""


_GUARDING: ContextVar[bool] = ContextVar("distack_guarding", default=False)


@contextmanager
def guarding() -> Iterator[None]:
    """While active, reading a failed setting of a partially valid config raises UnusableInput."""
    token = _GUARDING.set(True)
    try:
        yield
    finally:
        _GUARDING.reset(token)


def is_guarding() -> bool:
    """True inside `guarding()`."""
    return _GUARDING.get()


def skip_unusable(found: Iterable[Problem]) -> list[Problem]:
    """The problems a rule yields until it reads an unusable setting (then the rest of that rule is skipped)."""
    kept: list[Problem] = []
    try:
        for problem in found:
            kept.append(problem)
    except UnusableInput:
        pass
    return kept
