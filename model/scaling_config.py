"""Elasticity settings of a fleet and of the deployment (models used by `model/config.py`), and the figures the
stack derives from them: lifecycle-hook timeouts, the instance warm-up, each role's scaling signal.

Never imports aws_cdk or model.config (config imports this module; `dictl` reads it too).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from model import naming

# Lifecycle hooks: "The range is from 30 to 7200 seconds"; a heartbeat restarts the wait, up to a global timeout of
# 48 hours or 100 x HeartbeatTimeout, whichever is smaller (botocore autoscaling PutLifecycleHook.HeartbeatTimeout,
# LifecycleHook.GlobalTimeout; CloudFormation LifecycleHookSpecification:
# https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-properties-autoscaling-autoscalinggroup-lifecyclehookspecification.html).
HEARTBEAT_MIN_SECONDS = 30
HEARTBEAT_MAX_SECONDS = 7200
# What the termination hook allows beyond the drain wait: stopping the servers (di-vllm@'s TimeoutStopSec=120, within
# which `docker stop -t 90` runs) plus revoking the etcd leases and CompleteLifecycleAction (60 s).
DRAIN_MARGIN_SECONDS = 180
DRAIN_TIMEOUT_MAX_SECONDS = HEARTBEAT_MAX_SECONDS - DRAIN_MARGIN_SECONDS
# The proxy's shipper publishes the per-role load every 60 s (model/naming.py, PROXY_METRIC_*).
PROXY_METRIC_PERIOD_SECONDS = 60
# After the launch hook completes (the node completes it only once every endpoint answers /health and is registered),
# the instance serves at once; what remains is the signal catching up: the next 60 s datapoint includes the new
# endpoints, and one more period averages them in. The AWS guide: with a launch hook, "you can reduce the value of
# the default instance warmup. If you set the default instance warmup to 0 seconds, no additional waiting period is
# imposed beyond the time needed for the lifecycle hook"
# (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-default-instance-warmup.html). The time to
# serving itself (model/serving_time.py) is spent in Pending:Wait under the launch hook, whose timeout it sets.
# A longer warm-up would do harm: "While scaling out, we do not consider instances that are warming up as part of
# the current capacity", so a new, already-serving instance would be left out of the next scale-out's arithmetic.
INSTANCE_WARMUP_SECONDS = 2 * PROXY_METRIC_PERIOD_SECONDS
# Capacity Blocks: "Amazon EC2 will terminate any instances that are still running 30 minutes before the end time"
# (https://docs.aws.amazon.com/autoscaling/ec2/userguide/launch-template-capacity-blocks.html).
CAPACITY_BLOCK_RECLAIM_SECONDS = 30 * 60

# Which proxy signal each role scales on (dimensions Deployment and Role, statistic Average; model/naming.py).
# A standard endpoint serves whole requests, so its load is its streams in flight like a decode endpoint's.
ROLE_SIGNALS = {
    naming.ROLE_PREFILL: naming.PROXY_METRIC_PREFILL_LOAD,
    naming.ROLE_DECODE: naming.PROXY_METRIC_DECODE_LOAD,
    naming.ROLE_STANDARD: naming.PROXY_METRIC_DECODE_LOAD,
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScalingConfig(_Model):
    """Target tracking on the fleet's role signal, which the DiStack proxy publishes."""

    target: float = Field(
        gt=0, le=1024,
        description="Value of the role's signal to hold. prefill: requests waiting for or in prefill per prefill "
                    "endpoint; decode (and standard): streams in flight per endpoint, at most model.max_num_seqs.")
    scale_in: bool = Field(
        default=True,
        description="Let the policy remove instances when the signal stays below target (each leaves through the "
                    "termination hook, which drains it). false: the policy only adds.")


class ScheduledActionConfig(_Model):
    """One Auto Scaling scheduled action: at a time, set the group's minimum, maximum and/or desired size."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="Unique within the fleet, e.g. night or block-end.")
    recurrence: str | None = Field(
        default=None, max_length=255,
        description="Cron: minute hour day-of-month month day-of-week, e.g. '0 20 * * 1-5'. In UTC unless "
                    "time_zone is set.")
    start_time: datetime | None = Field(
        default=None, description="One-time action at this instant (ISO 8601 with a zone, e.g. "
                                  "2026-08-06T10:00:00Z), instead of recurrence.")
    time_zone: str | None = Field(
        default=None, max_length=255,
        description="IANA time zone of the recurrence, e.g. Europe/Berlin. Default: UTC.")
    min_size: int | None = Field(default=None, ge=0, le=256, description="New minimum size.")
    max_size: int | None = Field(default=None, ge=0, le=256, description="New maximum size (at most max_count).")
    desired_capacity: int | None = Field(default=None, ge=0, le=256, description="New desired size.")

    @property
    def to_zero(self) -> bool:
        """Empties the group and keeps it empty: nothing can launch (no policy, no health replacement)."""
        return self.max_size == 0 and self.desired_capacity in (0, None) and self.min_size in (0, None)


class WarmPoolConfig(_Model):
    """Stopped instances that have already booted, kept beside the group for a faster scale-out."""

    size: int = Field(ge=1, le=256, description="Instances kept in the pool (exactly this many).")
    state: Literal["Stopped"] = Field(
        default="Stopped", description="Stopped: only the EBS volumes cost money while waiting. Instance-store NVMe "
                                       "does not survive a stop.")
    reuse_on_scale_in: bool = Field(
        default=False,
        description="On scale-in, stop instances back into the pool instead of terminating them. The instance "
                    "leaves service under the termination hook with the target state Warmed:Stopped; the node "
                    "drains as for a termination (userdata/di-lifecycle handles either hook).")


class DrainConfig(_Model):
    """How a worker leaves: it deregisters, waits for its in-flight requests, stops, completes the hook."""

    timeout_seconds: int = Field(
        default=600, ge=0, le=DRAIN_TIMEOUT_MAX_SECONDS,
        description="Longest wait for in-flight requests before the servers stop (termination hook timeout is "
                    f"this plus {DRAIN_MARGIN_SECONDS} s, within Auto Scaling's {HEARTBEAT_MAX_SECONDS} s).")


def termination_heartbeat(drain: DrainConfig) -> int:
    """Termination hook timeout: the drain wait plus stopping and completing."""
    return drain.timeout_seconds + DRAIN_MARGIN_SECONDS


def launch_heartbeat(serving_seconds: float | None, drain: DrainConfig) -> int:
    """Launch hook timeout: the estimated time to serving of a new instance, capped at what Auto Scaling allows
    (the node heartbeats while it works, so a longer start, e.g. a first compile, still completes). It also covers a
    drain, since an instance that returns to a warm pool leaves service under this hook. Unknown estimate: the cap."""
    wanted = HEARTBEAT_MAX_SECONDS if serving_seconds is None else math.ceil(serving_seconds)
    wanted = max(wanted, termination_heartbeat(drain))
    return max(HEARTBEAT_MIN_SECONDS, min(HEARTBEAT_MAX_SECONDS, wanted))
