"""One finding about a config file: where (dotted path), what, and how to fix it.

Shared by the cross-field rules (`stacks/rules.py`) and each engine's own rules (`stacks/engines/`); the loader
turns the path into file:line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One rule violation (or, from `rules.warnings`, one warning): where, what, and how to fix it."""

    path: str
    message: str
    fix: str
