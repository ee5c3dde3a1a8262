"""Progress lines on stderr, printed only when the state changes (long waits stay readable in CI logs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Prints a line to stderr only when the state changes, so long waits stay readable in CI logs too."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self._last = ""
        self._start = time.monotonic()

    def update(self, text: str) -> None:
        """Report the current state (repeats are dropped)."""
        if self.quiet or text == self._last:
            return
        self._last = text
        elapsed = int(time.monotonic() - self._start)
        print(f"[{elapsed:>4}s] {text}", file=self.stream or sys.stderr, flush=True)

    def done(self) -> None:
        """Forget the last line so the next wait reports from scratch."""
        self._last = ""
