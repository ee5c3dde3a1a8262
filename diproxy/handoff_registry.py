"""The pending-handoff counts, published in etcd for the workers' drain (userdata/ops/drain.sh).

A prefill drain must wait until no decode still has to read its KV blocks. Only the proxies know that, and there may
be several (one per control host, behind a load balancer a worker cannot steer). Each proxy therefore writes, under a
lease of its own:
- ROOT/handoffs/proxies/PROXY_ID: "1", while it runs and reaches etcd: the drain trusts the counts only while some
  proxy is publishing;
- ROOT/handoffs/pending/HOST/PORT/PROXY_ID: the number of handoffs from prefill HOST:PORT it still tracks, deleted at 0.
The workers already reach etcd (DI_ETCD) and already read it in the drain, so no new address, port or credential is
needed on them. A proxy that dies takes its keys with its lease. Writes are coalesced: at most one round per
PUBLISH_INTERVAL, each writing only the endpoints whose count changed, so etcd sees no write per request.
ROOT is the proxy's --etcd-prefix without its last segment ("/workers/" -> "/").
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

import aiohttp

from diproxy.etcd_gateway import EtcdError, EtcdGateway
from diproxy.handoffs import HandoffTracker

log = logging.getLogger(__name__)

PUBLISH_INTERVAL = 0.05
LEASE_TTL = 10
_FAILURES = (EtcdError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)


def handoffs_root(etcd_prefix: str) -> str:
    """Where the handoff keys live: beside the workers' keys ("/workers/" -> "/handoffs/")."""
    parent = etcd_prefix.rstrip("/").rsplit("/", 1)[0]
    return f"{parent}/handoffs/"


def pending_key(root: str, prefill: str, proxy_id: str) -> str:
    host, port = prefill.rsplit(":", 1)
    return f"{root}pending/{host}/{port}/{proxy_id}"


class HandoffPublisher:
    def __init__(self, tracker: HandoffTracker, gateway: EtcdGateway, etcd_prefix: str,
                 interval: float = PUBLISH_INTERVAL, lease_ttl: int = LEASE_TTL) -> None:
        self.tracker, self.gateway, self.interval, self.lease_ttl = tracker, gateway, interval, lease_ttl
        self.root = handoffs_root(etcd_prefix)
        self.proxy_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._published: dict[str, int] = {}
        tracker.on_change(self._mark)

    def _mark(self, prefill: str) -> None:
        self._dirty.add(prefill)
        self._wake.set()

    async def run(self) -> None:
        """Publish until cancelled; etcd failures are retried with a fresh lease, everything republished."""
        lease: str | None = None
        loop = asyncio.get_running_loop()
        renew_at = 0.0
        while True:
            try:
                if lease is None:
                    lease = await self.gateway.grant_lease(self.lease_ttl)
                    await self.gateway.put(f"{self.root}proxies/{self.proxy_id}", "1", lease)
                    self._published.clear()
                    self._dirty.update(prefill for (prefill,) in self.tracker.pending_counts())
                    renew_at = loop.time() + self.lease_ttl / 3
                while self._dirty:
                    prefill = self._dirty.pop()
                    count = self.tracker.pending(prefill)
                    if self._published.get(prefill, 0) == count:
                        continue
                    key = pending_key(self.root, prefill, self.proxy_id)
                    if count:
                        await self.gateway.put(key, str(count), lease)
                    else:
                        await self.gateway.delete(key)
                    self._published[prefill] = count
                if loop.time() >= renew_at:
                    if await self.gateway.keep_alive(lease) <= 0:
                        lease = None
                        continue
                    renew_at = loop.time() + self.lease_ttl / 3
                await asyncio.sleep(self.interval)
                self._wake.clear()
                if not self._dirty:
                    try:
                        await asyncio.wait_for(self._wake.wait(), max(0.0, renew_at - loop.time()))
                    except asyncio.TimeoutError:
                        pass
            except _FAILURES as exc:
                log.warning("publishing pending KV handoffs in etcd failed: %s; retrying", exc)
                lease = None
                await asyncio.sleep(max(self.interval, 1.0))

    async def close(self) -> None:
        """Best effort: remove this proxy's keys now rather than at the lease's end."""
        keys = [f"{self.root}proxies/{self.proxy_id}",
                *(pending_key(self.root, p, self.proxy_id) for p, n in self._published.items() if n)]
        for key in keys:
            try:
                await self.gateway.delete(key)
            except _FAILURES:
                return
