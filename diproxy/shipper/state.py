"""What the shipper keeps across restarts, in its state directory: the journal cursor of the last entry CloudWatch
Logs accepted, and the counter values of the last published scrape."""

from __future__ import annotations

import json
import os
from pathlib import Path

from diproxy.shipper.metric_data import Baseline


class ShipperState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cursor_file = directory / "journal-cursor"
        self.baseline_file = directory / "metrics-baseline.json"

    def _write(self, path: Path, text: str) -> None:
        """Write-then-rename, so a crash never leaves half a cursor."""
        self.directory.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(path.suffix + ".new")
        scratch.write_text(text)
        os.replace(scratch, path)

    def cursor(self) -> str | None:
        try:
            return self.cursor_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def save_cursor(self, cursor: str) -> None:
        self._write(self.cursor_file, cursor + "\n")

    def baseline(self) -> Baseline | None:
        """The saved baseline, or None when there is none or it is unreadable (then counts start from zero)."""
        try:
            return Baseline.from_json(json.loads(self.baseline_file.read_text()))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def save_baseline(self, baseline: Baseline) -> None:
        self._write(self.baseline_file, json.dumps(baseline.to_json()))
