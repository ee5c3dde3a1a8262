"""Per-role load for autoscaling: how many requests each role's endpoints carry, now and averaged over any interval.

A request is in one phase at a time: `prefill` from its arrival (waiting for a worker included) until prefill has
answered, then `decode` until its answer ends; in standard mode `standard` all along. The load of a role is the
requests in its phase per healthy endpoint of that role, at least one endpoint counted so that a fleet at zero still
shows its demand. Each count is kept with its integral over time, so a scraper that reads the integrals at two
moments gets the exact time average between them (request-seconds / endpoint-seconds), not a sample of one instant:
the shipper publishes that average as the metric the fleets' target tracking follows.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

PREFILL = "prefill"
DECODE = "decode"
STANDARD = "standard"  # the Role dimension of a standard (non-DI) fleet, as model/naming.py ROLE_STANDARD


class Level:
    """A value that changes in steps, and its integral over time (value x seconds) since the start."""

    __slots__ = ("value", "_area", "_since", "_clock")

    def __init__(self, value: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.value = value
        self._clock = clock
        self._since = clock()
        self._area = 0.0

    def set(self, value: float, now: float | None = None) -> None:
        if now is None:
            now = self._clock()
        self._area += self.value * (now - self._since)
        self._since = now
        self.value = value

    def area(self) -> float:
        return self._area + self.value * (self._clock() - self._since)


class RoleLoad:
    """Requests in each role's phase and the role's healthy endpoints (at least 1), both as Levels."""

    def __init__(self, roles: tuple[str, ...], clock: Callable[[], float] = time.monotonic) -> None:
        self.roles = roles
        self._clock = clock
        self.requests = {role: Level(0.0, clock) for role in roles}
        self.endpoints = {role: Level(1.0, clock) for role in roles}

    def move(self, old: str | None, new: str | None) -> None:
        """One request leaves phase old (None: it just arrived) for phase new (None: it ended)."""
        now = self._clock()
        if old is not None:
            level = self.requests[old]
            level.set(level.value - 1, now)
        if new is not None:
            level = self.requests[new]
            level.set(level.value + 1, now)

    def set_endpoints(self, healthy: Mapping[str, int]) -> None:
        for role, level in self.endpoints.items():
            count = max(1, healthy.get(role, 0))
            if count != level.value:
                level.set(count)

    def per_endpoint(self) -> dict[tuple[str, ...], float]:
        return {(role,): self.requests[role].value / self.endpoints[role].value for role in self.roles}

    def request_seconds(self) -> dict[tuple[str, ...], float]:
        return {(role,): self.requests[role].area() for role in self.roles}

    def endpoint_seconds(self) -> dict[tuple[str, ...], float]:
        return {(role,): self.endpoints[role].area() for role in self.roles}
