"""Worker records, pool selection policies (least in-flight by power of two choices, or round robin) and the
per-worker back-off after a refused connection."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable, Protocol

PREFILL = "prefill"
DECODE = "decode"
STANDALONE = "standalone"
# The role segment of a standard (non-DI) endpoint's etcd key, /workers/standard/{ip}/{port}, as the stack's worker
# registrar writes it; such endpoints are STANDALONE in the pool.
REGISTERED_STANDARD = "standard"


# A worker that refused a connection is skipped for BACKOFF_FIRST seconds, doubling with each further refusal in a
# row up to BACKOFF_MAX, and forgiven at its next answer. One blip costs a request a few tens of milliseconds at most,
# never the 2 s until the next health probe; a worker that stays down is still found by its failing /health.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0


@dataclass(eq=False)
class Worker:
    role: str
    host: str
    port: int
    healthy: bool = False
    in_flight: int = 0
    sources: set[str] = field(default_factory=set)
    refusals: int = 0  # connections refused in a row
    backoff_until: float = 0.0  # loop time before which the worker is not picked if another one is ready
    # The port of the worker's KV-events publisher on its own IP, as its registry value announces it
    # (registry.kv_events_port); None: it publishes none (precise routing then learns nothing from it).
    kv_events_port: int | None = None

    def refused(self, now: float) -> float:
        """Record a refused connection; returns the back-off it earned, in seconds."""
        self.refusals += 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.refusals - 1))
        self.backoff_until = now + delay
        return delay

    def answered(self) -> None:
        """The worker answered a request (any status): its refusals are forgotten."""
        if self.refusals:
            self.refusals = 0
            self.backoff_until = 0.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class Selector(Protocol):
    def pick(self, candidates: list[Worker]) -> Worker: ...


class LeastInFlight:
    """Power of two choices: two random candidates, the one with fewer requests in flight wins."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates: list[Worker]) -> Worker:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(candidates, 2)
        return first if first.in_flight <= second.in_flight else second


class RoundRobin:
    """Independent turns per role, so prefill and decode picks do not advance each other."""

    def __init__(self) -> None:
        self._turns: dict[str, int] = {}

    def pick(self, candidates: list[Worker]) -> Worker:
        ordered = sorted(candidates, key=lambda w: (w.host, w.port))
        role = ordered[0].role
        turn = self._turns.get(role, 0)
        self._turns[role] = turn + 1
        return ordered[turn % len(ordered)]


def make_selector(policy: str) -> Selector:
    return RoundRobin() if policy == "round-robin" else LeastInFlight()


def prefer_untried(candidates: Iterable[Worker], tried: set[Worker]) -> list[Worker]:
    """Fresh workers if any remain, otherwise all of them (a retry may then reuse a worker)."""
    pool = list(candidates)
    fresh = [w for w in pool if w not in tried]
    return fresh or pool


def not_backed_off(candidates: list[Worker], now: float) -> list[Worker]:
    """The candidates outside their back-off; if every one is backed off, the one whose back-off ends first,
    so a blip on every worker of a role delays a request instead of emptying the pool."""
    ready = [w for w in candidates if w.backoff_until <= now]
    if ready or not candidates:
        return ready
    return [min(candidates, key=lambda w: w.backoff_until)]
