"""Worker records and pool selection policies (least in-flight by power of two choices, or round robin)."""

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


@dataclass(eq=False)
class Worker:
    role: str
    host: str
    port: int
    healthy: bool = False
    in_flight: int = 0
    sources: set[str] = field(default_factory=set)

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
