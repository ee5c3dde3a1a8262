"""One worker of a role for a request, from each candidate's cached prefix and load.

The cost is Dynamo's KV router's, in blocks: the prefill work a worker would do (the request's blocks it lacks) plus
a load term (ai-dynamo/dynamo lib/kv-router/src/scheduling/selector/default.rs@07a6c9ce worker_logit:
prefill_load_scale * max(0, raw_prefill_blocks - overlap_credit * device_overlap_blocks) + decode_blocks + ...,
lowest wins). Here the load term is `load_weight` blocks per request in flight; with the default 0 the load is left
to the bound below and to the tie-break, which measured best in bench/routing.py (docs/routing.md).

Bounded load ("consistent hashing with bounded loads", Mirrokni, Thorup and Zadimoghaddam, SODA 2018): with m
requests in flight on n candidates, counting this one, no candidate may go above ceil((1 + epsilon) * m / n); a
candidate at that cap is skipped however much it has cached. The least loaded candidate is always under the cap, so
some candidate is always eligible. A hot prefix thus spills to a second worker, which then caches it too, instead of
queueing on one.

Ties (equal cost and load) go to the highest rendezvous hash of (the request's first block key, the worker's
address): requests sharing a first block prefer the same worker on every proxy, before any of them has recorded a
choice, and the result does not depend on the candidates' order. Dynamo breaks ties at random
(default.rs minimum_cost_index) and llm-d's max-score picker shuffles; both make replicas diverge.

Where two proxies can still choose differently: the loads are each proxy's own requests in flight (so each keeps its
own share of a worker within (1 + epsilon) of fair, and the sum over proxies stays within (1 + epsilon) of the fair
total), and in the approximate mode each proxy records only its own choices. Fed the same index state and the same
loads, two proxies choose the same worker (tests/proxy/test_prefix_routing.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from hashlib import blake2b
from typing import Generic, Hashable, Mapping, Sequence, TypeVar

W = TypeVar("W", bound=Hashable)

DEFAULT_EPSILON = 0.25  # the spread goal: no worker above 1.25x the mean


@dataclass(frozen=True)
class Knobs:
    epsilon: float = DEFAULT_EPSILON
    load_weight: float = 0.0  # blocks of prefill one request in flight is worth

    def __post_init__(self) -> None:
        if self.epsilon < 0:
            raise ValueError("epsilon must be >= 0")
        if self.load_weight < 0:
            raise ValueError("load_weight must be >= 0")


@dataclass(frozen=True)
class Choice(Generic[W]):
    worker: W
    matched_blocks: int  # the chosen worker's cached prefix, in blocks
    best_matched_blocks: int  # the largest cached prefix among all candidates (before the load bound)
    total_blocks: int
    capped: bool  # a candidate with a longer cached prefix was passed over (its load cap, or load_weight)


def load_cap(loads: Sequence[int], epsilon: float) -> int:
    """The most requests a candidate may carry once this request is placed."""
    return max(1, math.ceil((1.0 + epsilon) * (sum(loads) + 1) / len(loads)))


def rendezvous(first_key: int, address: str) -> int:
    h = blake2b(first_key.to_bytes(8, "little"), digest_size=8, person=b"distack-hrw")
    h.update(address.encode())
    return int.from_bytes(h.digest(), "little")


def choose(candidates: Sequence[W], total_blocks: int, matched: Mapping[W, int], load: Mapping[W, int],
           first_key: int, address: Mapping[W, str], knobs: Knobs = Knobs()) -> Choice[W]:
    """The candidate to send the request to. matched: each candidate's cached prefix in blocks (index.BlockIndex.
    matched_blocks); load: its requests in flight; address: a stable name per candidate (host:port) for ties."""
    if not candidates:
        raise ValueError("no candidates")
    loads = [load.get(w, 0) for w in candidates]
    cap = load_cap(loads, knobs.epsilon)
    best_matched = max((matched.get(w, 0) for w in candidates), default=0)
    weight = knobs.load_weight
    best: list[W] = []
    best_cost = math.inf
    best_load = 0
    for worker, worker_load in zip(candidates, loads):
        if worker_load >= cap:
            continue
        cost = (total_blocks - matched.get(worker, 0)) + weight * worker_load
        if cost < best_cost or (cost == best_cost and worker_load < best_load):
            best, best_cost, best_load = [worker], cost, worker_load
        elif cost == best_cost and worker_load == best_load:
            best.append(worker)
    if not best:  # unreachable with loads >= 0 (the least loaded is under the cap); kept for safety
        least = min(loads)
        best = [w for w, wl in zip(candidates, loads) if wl == least]
    if len(best) == 1:
        chosen = best[0]
    else:
        chosen = max(best, key=lambda w: (rendezvous(first_key, address[w]), address[w]))
    chosen_matched = matched.get(chosen, 0)
    return Choice(chosen, chosen_matched, best_matched, total_blocks, chosen_matched < best_matched)
