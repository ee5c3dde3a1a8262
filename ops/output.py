"""How `dictl` shows results: a per-instance table or JSON on stdout (progress lines live in ops.progress)."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Sequence, TextIO

from ops.progress import Progress
from ops.results import InstanceResult, RunResult

__all__ = ["Progress", "last_line", "print_run", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns sized to their content."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def last_line(text: str) -> str:
    """The last non-empty output line: scripts end with their verdict."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:120] if lines else ""


# Exit status of a command that changed some instances and failed on (or never reached) others.
PARTIAL = 3


def print_run(run: RunResult, *, as_json: bool, summarize: Callable[[InstanceResult], str] = lambda r: "",
              out: TextIO | None = None, err: TextIO | None = None, changes: bool = False) -> int:
    """Print a run's per-instance results; return the exit status.

    0 all succeeded; 1 something failed; 3 (`changes`: the verb alters instances) some succeeded, some failed,
    so the deployment is partially changed.
    """
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
        done = len(run.results) - len(run.failed)
        if changes and done:
            print(f"{run.document}: partially applied: {done} of {len(run.results)} instance(s) changed", file=err)
            return PARTIAL
        return 1
    return 0


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text
