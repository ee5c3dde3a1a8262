"""`dictl scale`: a fleet's desired capacity within its Auto Scaling group's bounds."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from ops.errors import UsageError
from ops.targets import Deployment


def scale(deployment: Deployment, fleet: str, count: int, *, as_json: bool = False,
          out: TextIO | None = None) -> int:
    """Set DesiredCapacity and print the config line that keeps it (a deploy resets the group to `count`)."""
    out = out or sys.stdout
    if fleet not in deployment.config.fleets:
        known = ", ".join(deployment.config.fleets)
        raise UsageError(f"--fleet {fleet}: no such worker fleet in config/{deployment.name}.yaml\n"
                         f"  fix: use one of {known} (the control host is always one instance)")
    if count < 0:
        raise UsageError(f"--count {count}: must be 0 or more")
    group_name = deployment.fleet_group(fleet)
    groups = deployment.clients.autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[group_name])["AutoScalingGroups"]
    if not groups:
        raise UsageError(f"Auto Scaling group {group_name} of fleet {fleet} not found\n"
                         f"  fix: redeploy (make deploy ENV={deployment.name})")
    group = groups[0]
    low, high, before = group["MinSize"], group["MaxSize"], group["DesiredCapacity"]
    if not low <= count <= high:
        raise UsageError(f"--count {count}: fleet {fleet} may run {low} to {high} instances\n"
                         f"  fix: raise fleets.{fleet}.max_count in config/{deployment.name}.yaml and "
                         f"deploy (make deploy ENV={deployment.name}), then scale")
    deployment.clients.autoscaling.update_auto_scaling_group(AutoScalingGroupName=group_name,
                                                            DesiredCapacity=count)
    if as_json:
        print(json.dumps({"fleet": fleet, "group": group_name, "desired_before": before, "desired": count,
                          "min": low, "max": high, "config": {"file": f"config/{deployment.name}.yaml",
                                                              "key": f"fleets.{fleet}.count", "value": count}},
                         indent=2), file=out)
        return 0
    print(f"fleet {fleet} ({group_name}): desired capacity {before} -> {count}", file=out)
    if count < before:
        print(f"  scale-in picks instances itself; to choose, drain first: "
              f"dictl drain --env {deployment.name} --instance-id ID", file=out)
    print(f"keep it across the next deploy: in config/{deployment.name}.yaml set\n"
          f"  fleets.{fleet}.count: {count}", file=out)
    if count == 0:
        print(f"  (count must be at least 1 in the config; a deploy brings {fleet} back to "
              f"fleets.{fleet}.count)", file=out)
    return 0
