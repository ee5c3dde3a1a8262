"""What the shipper keeps across restarts, in its state directory: the counter values of the last published scrape,
so that a restarted shipper sends the increase since then, not since the proxy started."""

from __future__ import annotations

import json
import os
from pathlib import Path

from diproxy.shipper.metric_data import Baseline


class ShipperState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.baseline_file = directory / "metrics-baseline.json"

    def baseline(self) -> Baseline | None:
        """The saved baseline, or None when there is none or it is unreadable (then counts start from zero)."""
        try:
            return Baseline.from_json(json.loads(self.baseline_file.read_text()))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def save_baseline(self, baseline: Baseline) -> None:
        """Write-then-rename, so a crash never leaves half a baseline."""
        self.directory.mkdir(parents=True, exist_ok=True)
        scratch = self.baseline_file.with_suffix(".json.new")
        scratch.write_text(json.dumps(baseline.to_json()))
        os.replace(scratch, self.baseline_file)
