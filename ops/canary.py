"""`dictl canary`: the correctness canary on demand, on the control host (stacks/documents/canary.yaml runs
userdata/ops/canary.sh, which runs diproxy.canary). The same run the State Manager association starts every
half hour (stacks/observability/kv_alarms.py): it publishes its result like a scheduled run does."""

from __future__ import annotations

from typing import TextIO

from model import naming
from ops import commands
from ops.commands import SendOptions
from ops.output import Progress, print_run
from ops.results import InstanceResult
from ops.targets import Deployment, Selection

# The schedule's period (kv_alarms.CANARY_RATE_MINUTES, not imported: ops/ never imports stacks/), so an on-demand
# run checks the same pairs as the scheduled run of the same half hour.
PERIOD_SECONDS = 1800


def summary(result: InstanceResult) -> str:
    """The canary's last line: how many pairs matched, differed, failed or were skipped."""
    lines = [line for line in result.output.splitlines() if line.startswith("canary: ")]
    return lines[-1][len("canary: "):] if lines else ""


def canary(deployment: Deployment, *, max_waiting: int, options: SendOptions, progress: Progress, as_json: bool,
           out: TextIO | None = None) -> int:
    """Exit 0 when every checked pair matched; 1 when one differed, failed, or the run did not complete."""
    run = commands.run(deployment, "canary", Selection(role=naming.ROLE_CONTROL),
                       parameters={"period": str(PERIOD_SECONDS), "maxWaiting": str(max_waiting)},
                       options=options, progress=progress)
    return print_run(run, as_json=as_json, summarize=summary, out=out)
