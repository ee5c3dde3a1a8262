"""Fleets as Auto Scaling sees them: `dictl scale` (a fleet's desired capacity within its group's bounds) and the
per-fleet line of `dictl status` (desired / in service / warm, and what the fleet scales on)."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from ops.aws import pages
from ops.errors import UsageError
from ops.output import table
from ops.targets import Deployment
from model import naming
from model.scaling_config import ROLE_SIGNALS

IN_SERVICE = "InService"


def scale(deployment: Deployment, fleet: str, count: int, *, as_json: bool = False,
          out: TextIO | None = None) -> int:
    """Set DesiredCapacity within the group's MinSize/MaxSize and say what keeps it: for a fixed fleet the config's
    count (a deploy resets the group to it), for an autoscaled one min_count (the policy or a schedule may move it
    again; a deploy leaves it alone)."""
    out = out or sys.stdout
    if fleet not in deployment.config.fleets:
        known = ", ".join(deployment.config.fleets)
        raise UsageError(f"--fleet {fleet}: no such worker fleet in config/{deployment.name}.yaml\n"
                         f"  fix: use one of {known} (the control host is always one instance)")
    if count < 0:
        raise UsageError(f"--count {count}: must be 0 or more")
    config = deployment.config.fleets[fleet]
    group_name = deployment.fleet_group(fleet)
    groups = deployment.clients.autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[group_name])["AutoScalingGroups"]
    if not groups:
        raise UsageError(f"Auto Scaling group {group_name} of fleet {fleet} not found\n"
                         f"  fix: redeploy (make deploy ENV={deployment.name})")
    group = groups[0]
    low, high, before = group["MinSize"], group["MaxSize"], group["DesiredCapacity"]
    file = f"config/{deployment.name}.yaml"
    if count > high:
        raise UsageError(f"--count {count}: fleet {fleet} may run {low} to {high} instances\n"
                         f"  fix: raise fleets.{fleet}.max_count in {file} and deploy (make deploy "
                         f"ENV={deployment.name}), then scale")
    if count < low:
        raise UsageError(f"--count {count}: fleet {fleet} may run {low} to {high} instances\n"
                         f"  fix: lower fleets.{fleet}.min_count in {file} and deploy (make deploy "
                         f"ENV={deployment.name}), then scale")
    deployment.clients.autoscaling.update_auto_scaling_group(AutoScalingGroupName=group_name,
                                                            DesiredCapacity=count)
    key = f"fleets.{fleet}.min_count" if config.elastic else f"fleets.{fleet}.count"
    if as_json:
        print(json.dumps({"fleet": fleet, "group": group_name, "desired_before": before, "desired": count,
                          "min": low, "max": high, "config": {"file": file, "key": key, "value": count}},
                         indent=2), file=out)
        return 0
    print(f"fleet {fleet} ({group_name}): desired capacity {before} -> {count}", file=out)
    if count < before:
        print(f"  scale-in picks instances itself (each drains through the termination hook); to choose, drain "
              f"first: dictl drain --env {deployment.name} --instance-id ID", file=out)
    if config.elastic:
        print(f"fleet {fleet} sizes itself ({_scales_on(config)}): it may move away from {count} again, and a "
              f"deploy leaves its size alone. To keep at least {count}, in {file} set\n  {key}: {count}", file=out)
    else:
        print(f"keep it across the next deploy: in {file} set\n  {key}: {count}", file=out)
        if count == 0:
            print(f"  (count must be at least 1 in the config; a deploy brings {fleet} back to "
                  f"fleets.{fleet}.count)", file=out)
    return 0


def _scales_on(fleet: Any) -> str:
    parts = []
    if fleet.scaling is not None:
        parts.append(f"target tracking, {ROLE_SIGNALS[fleet.role]} at {fleet.scaling.target:g}")
    if fleet.schedule:
        parts.append(f"{len(fleet.schedule)} scheduled action(s)")
    return "; ".join(parts) or "fixed"


def group_rows(deployment: Deployment) -> list[dict[str, Any]]:
    """One row per worker fleet: its group's min/desired/max, instances in service, Stopped instances in its warm
    pool, and what sizes it. One DescribeAutoScalingGroups call, one DescribeWarmPool per fleet with a pool."""
    # A stack from before a fleet existed has no output for it: that fleet shows as missing.
    names = {fleet: deployment.outputs.get(naming.fleet_output(fleet), "") for fleet in deployment.config.fleets}
    found = {}
    if any(names.values()):
        for page in pages(deployment.clients.autoscaling.describe_auto_scaling_groups,
                          AutoScalingGroupNames=[n for n in names.values() if n]):
            for group in page.get("AutoScalingGroups", []):
                found[group["AutoScalingGroupName"]] = group
    rows = []
    for fleet, group_name in names.items():
        config = deployment.config.fleets[fleet]
        group = found.get(group_name)
        row: dict[str, Any] = {"fleet": fleet, "group": group_name or "-", "scales_on": _scales_on(config)}
        if group is None:
            rows.append({**row, "missing": True})
            continue
        instances = group.get("Instances", [])
        row.update(min=group["MinSize"], desired=group["DesiredCapacity"], max=group["MaxSize"],
                   in_service=sum(1 for i in instances if i.get("LifecycleState") == IN_SERVICE),
                   pending=sum(1 for i in instances if str(i.get("LifecycleState", "")).startswith("Pending")),
                   leaving=sum(1 for i in instances if str(i.get("LifecycleState", "")).startswith("Terminating")),
                   warm=_warm(deployment, group_name) if config.warm_pool else None)
        rows.append(row)
    return rows


def _warm(deployment: Deployment, group_name: str) -> int:
    """Instances in the warm pool (Warmed:Stopped ones and those still preparing)."""
    return sum(len(page.get("Instances", [])) for page in pages(
        deployment.clients.autoscaling.describe_warm_pool, AutoScalingGroupName=group_name, MaxRecords=100))


def render_groups(rows: list[dict[str, Any]]) -> str:
    """The per-fleet table `dictl status` prints above the per-instance one."""
    lines = []
    for row in rows:
        if row.get("missing"):
            lines.append((row["fleet"], "-", "-", "-", "-", "-", f"group {row['group']} not found"))
            continue
        moving = ", ".join(p for p in (f"{row['pending']} starting" if row["pending"] else "",
                                       f"{row['leaving']} leaving" if row["leaving"] else "") if p)
        lines.append((row["fleet"], f"{row['min']}-{row['max']}", row["desired"],
                      row["in_service"] if not moving else f"{row['in_service']} ({moving})",
                      "-" if row["warm"] is None else row["warm"], row["scales_on"], row["group"]))
    return table(("FLEET", "MIN-MAX", "DESIRED", "IN SERVICE", "WARM", "SCALES ON", "GROUP"), lines)
