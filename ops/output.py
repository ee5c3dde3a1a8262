"""How `dictl` shows things: progress lines on stderr, results as a per-instance table or JSON on stdout."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence, TextIO

if TYPE_CHECKING:
    from ops.commands import InstanceResult, RunResult


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


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns sized to their content."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def last_line(text: str) -> str:
    """The last non-empty output line: scripts end with their verdict."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:120] if lines else ""


def print_run(run: RunResult, *, as_json: bool, summarize: Callable[[InstanceResult], str] = lambda r: "",
              out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print a run's per-instance results; return the exit status (0 all succeeded, 1 otherwise)."""
    out, err = out or sys.stdout, err or sys.stderr
    if as_json:
        payload = {"document": run.document, "commands": run.command_ids, "ok": run.ok,
                   "instances": [{"instance_id": r.instance_id, "role": r.role, "fleet": r.fleet,
                                  "status": r.status, "output": _maybe_json(r.output)} for r in run.results]}
        print(json.dumps(payload, indent=2), file=out)
    else:
        rows = [(r.instance_id, r.role, r.fleet, r.status, summarize(r) or last_line(r.output))
                for r in run.results]
        print(table(("INSTANCE", "ROLE", "FLEET", "STATUS", "DETAIL"), rows), file=out)
    if not run.results:
        print(f"{run.document}: no instance matched; nothing ran", file=err)
        return 1
    if run.failed:
        names = ", ".join(f"{r.instance_id} ({r.status})" for r in run.failed)
        print(f"{run.document}: {len(run.failed)} of {len(run.results)} failed: {names}", file=err)
        return 1
    return 0


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text
