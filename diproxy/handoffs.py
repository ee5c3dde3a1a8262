"""KV handoffs in flight: from a prefill's answer with kv_transfer_params (its KV blocks are now held for a decode) to
the decode that reads them having started, per prefill endpoint; and the release of blocks whose decode never came.

Why a release is needed. A NIXL prefill that answered with kv_transfer_params keeps the request's KV blocks until a
decode reads them, or until VLLM_NIXL_ABORT_REQUEST_TIMEOUT (480 s) passes and it frees them itself
(vllm-project/vllm vllm/distributed/kv_transfer/kv_connector/v1/nixl/scheduler.py@053da34b request_finished:
`_reqs_need_send[id] = time.perf_counter() + envs.VLLM_NIXL_ABORT_REQUEST_TIMEOUT`, returning delay_free_blocks). A
client that leaves after prefill (aiohttp cancels its handler, diproxy/serving.py) would strand them that long.

How they are released: a one-token decode. The proxy sends a decode worker the client's request capped at one token,
not streamed, with the prefill's kv_transfer_params, and discards the answer. The decode pulls the blocks and its
connector notifies the prefill, which frees them at once: the path every handoff takes, nothing vLLM does not do for a
client. Cost: one decode slot for one scheduling step and one KV transfer of the prompt (what the client's own decode
would have cost in transfer). The alternatives, and why not:
- vLLM's abort path: a decode request carrying kv_transfer_params that is aborted before it is scheduled notifies the
  prefill to free the blocks without reading them (scheduler.py@053da34b request_finished, do_remote_prefill still
  set: "add empty block_ids to _reqs_need_recv so that our worker side will notify and free blocks in the prefill
  instance"). It is cheaper, but whether a request is aborted before being scheduled is a race the proxy cannot win
  on purpose: the abort follows the HTTP disconnect, and a decode that already scheduled the request pulls anyway.
  It is what happens when a client leaves after its decode request was sent; the proxy then leaves it to vLLM.
- A shorter VLLM_NIXL_ABORT_REQUEST_TIMEOUT: the prefill frees every unread request's blocks when the timer expires
  (nixl worker get_finished: "Releasing expired KV blocks ...", counted in vllm:nixl_num_kv_expired_reqs), whether or
  not its decode is merely queued behind others. A decode that comes after the expiry reads blocks another request
  may have reused: wrong KV, not an error. It trades stranded blocks for silent corruption under load.

Releases run as background tasks the cancelled request leaves behind, at most MAX_CONCURRENT at once and MAX_QUEUED
waiting; beyond that a release is dropped (counted, logged) and the prefill's own timer frees the blocks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Awaitable, Callable

from diproxy.metrics import Counter, Gauge, Histogram, Metric

log = logging.getLogger(__name__)

MAX_CONCURRENT = 16
MAX_QUEUED = 1024
# From prefill answered to decode started: a transfer plus decode's queueing and first step. Seconds.
HANDOFF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 480.0)
RELEASE_OUTCOMES = ("released", "failed", "dropped")


class Pending:
    """One handoff: opened when prefill answered with kv_transfer_params, closed once (decode started, released, or
    left to vLLM's own abort path)."""

    __slots__ = ("tracker", "prefill", "token", "opened", "decode_sent", "closed")

    def __init__(self, tracker: "HandoffTracker", prefill: str, token: int, opened: float) -> None:
        self.tracker, self.prefill, self.token, self.opened = tracker, prefill, token, opened
        self.decode_sent = False  # a decode request carrying the kv_transfer_params may have reached a worker
        self.closed = False

    def close(self, started: bool = False) -> None:
        """Decode started (started=True: its time is observed), or the handoff ends otherwise."""
        if not self.closed:
            self.closed = True
            self.tracker._close(self, started)


class HandoffTracker:
    """Pending handoffs per prefill endpoint (HOST:PORT), their age, and the releases of abandoned ones."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_concurrent: int = MAX_CONCURRENT,
                 max_queued: int = MAX_QUEUED) -> None:
        self._clock = clock
        self._pending: dict[str, dict[int, float]] = {}
        self._tokens = itertools.count()
        self._releases: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._max_queued = max_queued
        self._listeners: list[Callable[[str], None]] = []
        self.handoff_seconds = Histogram(
            "diproxy_kv_handoff_seconds", "From a prefill's answer with kv_transfer_params to its decode's response "
            "headers (a KV transfer, decode's queueing and, when streamed, its first step).", buckets=HANDOFF_BUCKETS)
        self.releases = Counter(
            "diproxy_kv_releases_total", "Prefill KV blocks of a client that left before decode, by outcome: released "
            "(a one-token decode read them), failed (no decode took it; the prefill's timer frees them), dropped "
            "(too many releases at once; the same).", ("outcome",))
        self._gauges = (
            Gauge("diproxy_kv_handoffs_pending", "Handoffs whose prefill holds KV blocks that no decode has started "
                  "on yet, per prefill endpoint.", ("prefill",), self.pending_counts),
            Gauge("diproxy_kv_handoff_oldest_seconds", "Age of the oldest pending handoff, per prefill endpoint.",
                  ("prefill",), self.oldest_ages),
            Gauge("diproxy_kv_releases_in_progress", "Releases running or waiting for a slot.", (),
                  lambda: {(): float(len(self._releases))}),
        )

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (self.releases, self.handoff_seconds, *self._gauges)

    # -- handoffs -------------------------------------------------------------------------------
    def open(self, prefill: str) -> Pending:
        token, now = next(self._tokens), self._clock()
        self._pending.setdefault(prefill, {})[token] = now
        self._changed(prefill)
        return Pending(self, prefill, token, now)

    def _close(self, pending: Pending, started: bool) -> None:
        handoffs = self._pending.get(pending.prefill, {})
        handoffs.pop(pending.token, None)
        if not handoffs:
            self._pending.pop(pending.prefill, None)
        if started:
            self.handoff_seconds.observe(self._clock() - pending.opened)
        self._changed(pending.prefill)

    def pending(self, prefill: str) -> int:
        return len(self._pending.get(prefill, ()))

    def total(self) -> int:
        return sum(len(h) for h in self._pending.values())

    def pending_counts(self) -> dict[tuple[str, ...], float]:
        return {(prefill,): float(len(h)) for prefill, h in self._pending.items()}

    def oldest_ages(self) -> dict[tuple[str, ...], float]:
        now = self._clock()
        return {(prefill,): round(now - min(h.values()), 3) for prefill, h in self._pending.items()}

    def on_change(self, listener: Callable[[str], None]) -> None:
        """listener(prefill) after every change of that endpoint's count (the etcd publisher)."""
        self._listeners.append(listener)

    def _changed(self, prefill: str) -> None:
        for listener in self._listeners:
            listener(prefill)

    # -- releases ---------------------------------------------------------------------------------
    def release(self, pending: Pending, read: Callable[[], Awaitable[object]]) -> None:
        """Run read() (the one-token decode) in the background, bounded; the handoff stays pending until it ends.
        Called from a cancelled handler: it must not await."""
        if len(self._releases) >= self._max_queued:
            self.releases.inc("dropped")
            log.warning("KV release for prefill %s dropped (%d already running or waiting); the prefill frees the "
                        "blocks at VLLM_NIXL_ABORT_REQUEST_TIMEOUT", pending.prefill, len(self._releases))
            pending.close()
            return
        task = asyncio.get_running_loop().create_task(self._release(pending, read), name="kv-release")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, pending: Pending, read: Callable[[], Awaitable[object]]) -> None:
        try:
            async with self._slots:
                await read()
            self.releases.inc("released")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure ends in the prefill's own timer; say which
            self.releases.inc("failed")
            log.warning("KV release for prefill %s failed: %s; the prefill frees the blocks at "
                        "VLLM_NIXL_ABORT_REQUEST_TIMEOUT", pending.prefill, exc)
        finally:
            pending.close()

    async def close(self) -> None:
        """The proxy stops: releases still running are cancelled (the prefills' timers free what they held)."""
        tasks = list(self._releases)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
