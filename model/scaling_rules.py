"""Static rules on the elasticity settings: sizes, the target-tracking target, scheduled actions, warm pools,
Capacity Blocks and the named placement group. Each problem with its dotted path and fix.

Checks that need AWS (the block's end time and zone, the reservation's placement group) are `dictl preflight`'s.
"""

from __future__ import annotations

import zoneinfo
from typing import Iterator

from model import cron, naming
from model.config import DeploymentConfig, FleetConfig
from model.problems import Problem
from model.scaling_config import (CAPACITY_BLOCK_RECLAIM_SECONDS, DRAIN_MARGIN_SECONDS, ROLE_SIGNALS,
                                   ScheduledActionConfig)

# What a role's target counts, for messages.
SIGNAL_WORDS = {naming.ROLE_PREFILL: "requests waiting for or in prefill per prefill endpoint",
                naming.ROLE_DECODE: "streams in flight per decode endpoint",
                naming.ROLE_STANDARD: "streams in flight per endpoint"}


def check(config: DeploymentConfig) -> Iterator[Problem]:
    """Every elasticity problem of `config`, fleet by fleet, then the placement group."""
    for name, fleet in config.fleets.items():
        at = f"fleets.{name}"
        yield from _sizes(at, fleet)
        yield from _scaling(config, at, fleet)
        yield from _schedule(at, fleet)
        yield from _warm_pool(at, fleet)
    yield from _named_placement_group(config)


def warnings(config: DeploymentConfig) -> list[Problem]:
    """What synth accepts but prints: a Capacity Block fleet that nothing empties before the block ends. Only
    `dictl preflight` knows the end time, and refuses the deploy there; an operator may also empty it by hand."""
    return [problem for name, fleet in config.fleets.items()
            for problem in _capacity_block(config, f"fleets.{name}", fleet)]


def _sizes(at: str, fleet: FleetConfig) -> Iterator[Problem]:
    if fleet.min_count is not None and fleet.min_count > fleet.ceiling:
        yield Problem(f"{at}.min_count", f"min_count {fleet.min_count} is above max_count {fleet.ceiling}",
                      f"set min_count to {fleet.ceiling} or less, or raise max_count")
    elif fleet.elastic and fleet.min_count is not None and "count" in fleet.model_fields_set \
            and fleet.count != fleet.min_count:
        yield Problem(f"{at}.count", f"an autoscaled fleet starts at min_count ({fleet.min_count}) and no deploy "
                                     f"resets its size afterwards, so count {fleet.count} would never apply",
                      f"remove count, or set min_count: {fleet.count}")
    elif not fleet.elastic and fleet.min_count is not None and fleet.min_count > fleet.count:
        yield Problem(f"{at}.min_count", f"min_count {fleet.min_count} is above count {fleet.count}",
                      f"set min_count to {fleet.count} or less, or raise count")


def _scaling(config: DeploymentConfig, at: str, fleet: FleetConfig) -> Iterator[Problem]:
    scaling = fleet.scaling
    if scaling is None:
        return
    if fleet.role not in ROLE_SIGNALS:
        yield Problem(f"{at}.scaling", "a colocated fleet holds a prefill and a decode endpoint on each instance, so "
                                       "no one signal can size it (the proxy counts its endpoints in both roles)",
                      "split it into a prefill and a decode fleet to scale each on its own signal, or size it with "
                      "schedule and dictl scale")
        return
    if not config.runs_distack_proxy:
        yield Problem(f"{at}.scaling", "the load signals come from DiStack's proxy; neuron-proxy-server publishes "
                                       "none, so the policy would never act",
                      "set proxy: distack, or remove scaling")
        return
    limit = config.model.max_num_seqs
    if scaling.target > limit:
        what = "its batch" if fleet.role == naming.ROLE_PREFILL else "at once"
        yield Problem(f"{at}.scaling.target",
                      f"target {scaling.target:g} ({SIGNAL_WORDS[fleet.role]}) is above model.max_num_seqs {limit}: "
                      f"an endpoint runs at most {limit} sequences {what}, so at target the rest would always queue",
                      f"use a target of {limit} or less, e.g. {max(1, round(limit * 0.75))} (75 %)")
    if fleet.floor == 0 and not any((a.min_size or 0) > 0 or (a.desired_capacity or 0) > 0 for a in fleet.schedule):
        yield Problem(f"{at}.min_count", "target tracking is not relied on to bring a fleet back from zero: with no "
                                         "instance it has no capacity to scale in proportion to, and requests that "
                                         "find no endpoint of this role fail at the proxy",
                      "set min_count: 1 or more, or add a scheduled action that raises min_size again (e.g. in the "
                      "morning after a night at zero)")


def _schedule(at: str, fleet: FleetConfig) -> Iterator[Problem]:
    seen: dict[str, str] = {}
    for i, action in enumerate(fleet.schedule):
        where = f"{at}.schedule[{i}]"
        # The name becomes part of a construct id, where case, '-', '_' and '.' do not count.
        key = naming.pascal(action.name.replace(".", "-")).lower()
        if key in seen:
            yield Problem(f"{where}.name", f"{action.name} repeats the name of scheduled action {seen[key]}",
                          "give each action of the fleet its own name")
        seen.setdefault(key, action.name)
        if (action.recurrence is None) == (action.start_time is None):
            yield Problem(where, "a scheduled action needs exactly one of recurrence (cron) and start_time (once)",
                          "keep recurrence: '0 20 * * *' for a daily action, or start_time: 2026-08-06T10:00:00Z "
                          "for a single one")
        if action.recurrence is not None:
            try:
                cron.parse(action.recurrence)
            except cron.CronError as err:
                yield Problem(f"{where}.recurrence", str(err),
                              "write five fields: minute hour day-of-month month day-of-week, e.g. '0 20 * * 1-5'")
        if action.time_zone is not None:
            if action.recurrence is None:
                yield Problem(f"{where}.time_zone", "time_zone applies to a recurrence; start_time carries its own "
                                                    "zone", "remove time_zone, or write start_time with its offset")
            elif not _known_zone(action.time_zone):
                yield Problem(f"{where}.time_zone", f"'{action.time_zone}' is not an IANA time zone",
                              "use a name such as UTC, Europe/Berlin or America/New_York")
        if action.start_time is not None and action.start_time.tzinfo is None:
            yield Problem(f"{where}.start_time", "start_time has no zone, so its instant is ambiguous",
                          "append Z for UTC (e.g. 2026-08-06T10:00:00Z) or an offset such as +02:00")
        yield from _action_sizes(at, where, fleet, action)


def _action_sizes(at: str, where: str, fleet: FleetConfig, action: ScheduledActionConfig) -> Iterator[Problem]:
    sizes = {"min_size": action.min_size, "max_size": action.max_size, "desired_capacity": action.desired_capacity}
    if all(v is None for v in sizes.values()):
        yield Problem(where, "a scheduled action must set min_size, max_size or desired_capacity",
                      "set at least one of them, e.g. desired_capacity: 0")
        return
    above = [(k, v) for k, v in sizes.items() if v is not None and v > fleet.ceiling]
    for key, value in above:
        yield Problem(f"{where}.{key}", f"{key} {value} is above the fleet's max_count {fleet.ceiling}",
                      f"use at most {fleet.ceiling}, or raise {at}.max_count")
    if above:
        return
    low = fleet.floor if action.min_size is None else action.min_size
    high = fleet.ceiling if action.max_size is None else action.max_size
    if low > high:
        yield Problem(where, f"the group's minimum would be {low} and its maximum {high}",
                      f"set min_size: {high} in this action (or lower; the fleet's min_count {fleet.floor} applies "
                      "where the action sets none)")
    elif action.desired_capacity is not None and not low <= action.desired_capacity <= high:
        yield Problem(f"{where}.desired_capacity", f"desired_capacity {action.desired_capacity} is outside the "
                                                   f"group's {low}-{high} after this action",
                      f"use a desired_capacity from {low} to {high}, or set min_size/max_size in the action")


def _known_zone(name: str) -> bool:
    # Without a time zone database here the name cannot be judged; Auto Scaling checks it at deploy.
    if not zoneinfo.available_timezones():
        return True
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _warm_pool(at: str, fleet: FleetConfig) -> Iterator[Problem]:
    """AWS's limits: no warm pool with a mixed instances policy or Spot (DiStack uses neither), Stopped only with an
    EBS root device (DiStack's always is), and none with Capacity Blocks:
    https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-warm-pools.html#warm-pools-limitations,
    https://docs.aws.amazon.com/autoscaling/ec2/userguide/launch-template-capacity-blocks.html#capacity-blocks-limitations
    """
    pool = fleet.warm_pool
    if pool is None:
        return
    if fleet.capacity.type == "capacity-block":
        yield Problem(f"{at}.warm_pool", "Auto Scaling supports no warm pool with a Capacity Block",
                      "remove warm_pool (a Capacity Block's instances are only yours while the block lasts)")
    elif pool.size > fleet.ceiling:
        yield Problem(f"{at}.warm_pool.size", f"a warm pool of {pool.size} is larger than max_count "
                                              f"{fleet.ceiling}, so some of it could never be drawn into service",
                      f"use a size of {fleet.ceiling} or less")


def _capacity_block(config: DeploymentConfig, at: str, fleet: FleetConfig) -> Iterator[Problem]:
    """The Auto Scaling guide: "Scale in your Auto Scaling group to zero more than 30 minutes before the Capacity Block
    reservation end time", leaving the lifecycle action time to complete first
    (https://docs.aws.amazon.com/autoscaling/ec2/userguide/launch-template-capacity-blocks.html)."""
    if fleet.capacity.type != "capacity-block" or any(a.to_zero for a in fleet.schedule):
        return
    lead = (CAPACITY_BLOCK_RECLAIM_SECONDS + config.drain.timeout_seconds + DRAIN_MARGIN_SECONDS + 59) // 60
    yield Problem(f"{at}.schedule", "no scheduled action empties this Capacity Block fleet before the block ends: EC2 "
                                    "terminates its instances 30 minutes before the end time, in-flight requests and "
                                    "all, and Auto Scaling would keep trying to replace them",
                  f"add a scheduled action at least {lead} minutes before the block's end (30 minutes plus the "
                  "drain): {name: block-end, start_time: END, min_size: 0, max_size: 0, desired_capacity: 0}; "
                  "dictl preflight checks it against the block")


def _named_placement_group(config: DeploymentConfig) -> Iterator[Problem]:
    if config.placement_group_name is None:
        return
    if config.placement_group is False:
        yield Problem("placement_group_name", "a placement group is named but placement_group is false",
                      "remove placement_group: false, or remove placement_group_name")
    elif not any(config.fleet_placement_group(name) for name in config.fleets):
        yield Problem("placement_group_name", "every fleet runs in a Capacity Block, which needs no placement group",
                      "remove placement_group_name")
