"""The proxy's cache-aware routing: diproxy/cache_routing wired to the worker pools, the settings and the metrics
(docs/routing.md).

- blind: no PrefixRouting work at all; the Router keeps --selection (least in flight or round robin).
- approximate: the request's prefix is hashed from its text; each choice is recorded as what the worker will cache.
- precise: the request is tokenized (an injected Tokenizer, else the `tokenizers` package on --tokenizer-file) and
  each worker's blocks come from its own KV events: one ZMQ Subscriber per usable worker that announces a
  kv_events_port in its registry value (registry.kv_events_port), stopped and forgotten when it leaves.
A worker that leaves the usable pool (deregistered, or failing /health) is forgotten in both modes: a worker that
comes back may have restarted with an empty cache, and under-estimating is safer than routing to a cold cache.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Iterable, Sequence

from diproxy.cache_routing.choice import Knobs
from diproxy.cache_routing.kv_events import Event, Subscriber
from diproxy.cache_routing.pd_decider import PdDecider
from diproxy.cache_routing.picker import APPROXIMATE, PRECISE, PrefixPicker, RequestKeys
from diproxy.cache_routing.tokenizer import HfTokenizer, Tokenizer
from diproxy.metrics import Counter, Gauge, Metric
from diproxy.workers import DECODE, Worker

if TYPE_CHECKING:
    from diproxy.config import Settings

log = logging.getLogger(__name__)

BLIND = "blind"
MODES = (BLIND, APPROXIMATE, PRECISE)
# The pin docs/routing.md names; precise mode refuses to start without the package.
TOKENIZERS_PIN = "tokenizers==0.23.3"


class RoutingSetupError(Exception):
    """The routing settings cannot be served (precise mode without its tokenizer): the proxy refuses to start."""


def load_tokenizer(settings: "Settings") -> Tokenizer:
    if not settings.tokenizer_file:
        raise RoutingSetupError("--routing precise needs --tokenizer-file (DIPROXY_TOKENIZER_FILE), the model's "
                                "tokenizer.json; or use --routing approximate")
    if importlib.util.find_spec("tokenizers") is None:
        raise RoutingSetupError(f"--routing precise needs the `tokenizers` package ({TOKENIZERS_PIN}), which this "
                                "proxy's environment lacks; install it or use --routing approximate")
    try:
        return HfTokenizer(settings.tokenizer_file)
    except Exception as exc:  # the Rust tokenizer raises its own Exception type for a missing or bad file
        raise RoutingSetupError(f"--tokenizer-file {settings.tokenizer_file}: {exc}") from exc


@dataclass
class Route:
    """One request's routing state: its block keys, the decode worker chosen before prefill (consumed by the first
    decode pick), and whether decode serves it alone."""

    keys: RequestKeys
    decode: Worker | None = None
    alone: bool = False


class PrefixRouting:
    def __init__(self, settings: "Settings", tokenizer: Tokenizer | None = None) -> None:
        self.mode = settings.routing
        if self.mode not in MODES:
            raise RoutingSetupError(f"unknown routing mode {self.mode!r}; choose one of {', '.join(MODES)}")
        self.migration_limit = settings.migration_limit
        self.picker: PrefixPicker | None = None
        self.pd_enabled = settings.pd_max_uncached_tokens > 0
        if self.mode != BLIND:
            if self.mode == PRECISE and tokenizer is None:
                tokenizer = load_tokenizer(settings)
            decider = PdDecider(self.pd_enabled, max(settings.pd_max_uncached_tokens, 0),
                                settings.pd_max_uncached_ratio)
            self.picker = PrefixPicker(self.mode, Knobs(settings.routing_epsilon, settings.routing_load_weight),
                                       decider, settings.routing_block_bytes, capacity=settings.routing_capacity,
                                       tokenizer=tokenizer)
        self._known: set[tuple[str, str]] = set()
        self._subscribers: dict[tuple[str, str], Subscriber] = {}
        self._stopping: set[asyncio.Task] = set()
        self.blocks = Counter("diproxy_prefix_blocks_total", "Cache-aware routing: prompt blocks of the requests "
                              "routed, per role (the hit ratio's denominator).", ("role",))
        self.hit_blocks = Counter("diproxy_prefix_hit_blocks_total", "Cache-aware routing: prompt blocks the chosen "
                                  "worker held, as the proxy's index saw them, per role.", ("role",))
        self.capped = Counter("diproxy_routing_capped_total", "Choices that passed over a worker with a longer cached "
                              "prefix (its bounded-load cap, or the load weight), per role.", ("role",))
        self.decode_alone = Counter("diproxy_decode_alone_total", "PD decider: requests decode served alone, without "
                                    "the prefill hop.")
        self.migrations = Counter("diproxy_migrations_total", "Streams whose decode died after the first byte, by "
                                  "outcome: ok (carried to a new pair), failed (no new pair answered), refused "
                                  "(limit reached or not migratable).", ("outcome",))
        self.event_gaps = Counter("diproxy_kv_event_gaps_total", "Precise routing: sequence gaps in a worker's KV "
                                  "events (its view is cleared).", ("role",))
        self.event_batches = Counter("diproxy_kv_event_batches_total", "Precise routing: KV event batches applied.",
                                     ("role",))
        # Rendered from the start (at 0), so a rate over them exists before the first event.
        self.decode_alone.inc(amount=0)
        for outcome in ("ok", "failed", "refused"):
            self.migrations.inc(outcome, amount=0)
        self.metrics: Sequence[Metric] = (
            Gauge("diproxy_routing_info", "The routing mode (always 1).", ("mode",), lambda: {(self.mode,): 1.0}),
            self.blocks, self.hit_blocks,
            Gauge("diproxy_prefix_hit_ratio", "Cache-aware routing: hit blocks over prompt blocks since start.",
                  ("role",), self._hit_ratio),
            self.capped, self.decode_alone, self.migrations, self.event_gaps, self.event_batches,
            Gauge("diproxy_kv_event_orphan_blocks_total", "Precise routing: stored blocks skipped because their "
                  "parent was never seen.", ("role",), self._orphans, "counter"),
        )

    @property
    def enabled(self) -> bool:
        return self.picker is not None

    def _hit_ratio(self) -> dict[tuple[str, ...], float]:
        return {key: self.hit_blocks.values.get(key, 0.0) / total for key, total in self.blocks.values.items() if total}

    def _orphans(self) -> dict[tuple[str, ...], float]:
        if self.picker is None or self.mode != PRECISE:
            return {}
        return {(role,): float(index.orphans) for role, index in self.picker.precise.items() if index.orphans}

    # -- choices ------------------------------------------------------------------------------
    def route(self, body: dict) -> Route | None:
        return None if self.picker is None else Route(self.picker.request_keys(body))

    def choose(self, role: str, candidates: Sequence[Worker], route: Route) -> Worker:
        """The candidate with the best cached prefix under bounded load; recorded (approximate mode) and counted."""
        assert self.picker is not None
        choice = self.picker.pick(role, candidates, route.keys)
        self.blocks.inc(role, amount=choice.total_blocks)
        self.hit_blocks.inc(role, amount=choice.matched_blocks)
        if choice.capped:
            self.capped.inc(role)
        self.picker.record(role, choice.worker, route.keys)
        if role == DECODE:
            route.alone = self.pd_enabled and self.picker.decode_alone(route.keys, choice)
        return choice.worker

    def choose_decode_first(self, route: Route, candidates: Sequence[Worker]) -> bool:
        """Decode chosen before prefill (llm-d's disagg profile handler does the same), kept for the first decode
        pick; True: the PD decider sends the request to it alone."""
        route.decode = self.choose(DECODE, candidates, route)
        if route.alone:
            self.decode_alone.inc()
        return route.alone

    # -- membership and KV events -------------------------------------------------------------
    def sync(self, workers: Iterable[Worker]) -> None:
        """Follow the usable pools: forget the workers that left, and (precise mode) keep one Subscriber per usable
        worker that announces a KV-events port."""
        if self.picker is None:
            return
        usable = {(w.role, w.address): w for w in workers if w.healthy}
        for role, address in self._known - usable.keys():
            self.picker.forget(role, address)
            self._stop_subscriber((role, address))
        self._known = set(usable)
        if self.mode != PRECISE:
            return
        for key, worker in usable.items():
            endpoint = f"tcp://{worker.host}:{worker.kv_events_port}" if worker.kv_events_port else None
            current = self._subscribers.get(key)
            if current is not None and current.endpoint == endpoint:
                continue
            if current is not None:  # the worker announced another port: it restarted
                self._stop_subscriber(key)
                self.picker.forget(*key)
            if endpoint is not None:
                self._subscribers[key] = self._subscribe(key, endpoint)

    def _subscribe(self, key: tuple[str, str], endpoint: str) -> Subscriber:
        role, address = key
        picker = self.picker
        assert picker is not None

        def apply(worker: Hashable, events: list[Event]) -> None:
            picker.apply_events(role, str(worker), events)
            self.event_batches.inc(role)

        def on_gap(worker: Hashable) -> None:
            picker.precise[role].clear(worker)
            self.event_gaps.inc(role)

        subscriber = Subscriber(endpoint, address, apply, on_gap)
        subscriber.start()
        log.info("subscribed to %s %s's KV events at %s", role, address, endpoint)
        return subscriber

    def _stop_subscriber(self, key: tuple[str, str]) -> None:
        subscriber = self._subscribers.pop(key, None)
        if subscriber is not None:
            task = asyncio.get_running_loop().create_task(subscriber.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def subscribed(self) -> dict[tuple[str, str], str]:
        """(role, address) -> endpoint of every running subscriber (tests, /ready)."""
        return {key: sub.endpoint for key, sub in self._subscribers.items()}

    async def close(self) -> None:
        for key in list(self._subscribers):
            self._stop_subscriber(key)
        await asyncio.gather(*self._stopping, return_exceptions=True)
