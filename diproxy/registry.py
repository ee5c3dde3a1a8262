"""The worker pools: discovery (etcd watch plus periodic resync, or a static list) and /health probing."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable, Iterable

import aiohttp

from diproxy.etcd_gateway import EtcdError, EtcdGateway, KeyValue, WatchCompacted
from diproxy.worker_policy import WorkerPolicy
from diproxy.workers import DECODE, PREFILL, REGISTERED_STANDARD, STANDALONE, Worker

log = logging.getLogger(__name__)

ETCD_SOURCE = "etcd"
STATIC_SOURCE = "static"
WorkerKey = tuple[str, str, int]


def parse_worker_key(key: str, prefix: str, roles: tuple[str, ...] = (PREFILL, DECODE)) -> WorkerKey | None:
    """`{prefix}{role}/{ip}/{port}` → (role, ip, port); None for keys of any other shape or role."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix):].split("/")
    if len(parts) != 3 or parts[0] not in roles or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def kv_events_port(value: str) -> int | None:
    """The KV-events port a worker announces in its registry value, {"kv_events_port": PORT, ...} (docs/routing.md);
    None when absent or invalid. Only a port is taken, never a host: the events are read from the worker's own
    address, which the worker policy has admitted, so a registry writer cannot point the proxy elsewhere."""
    try:
        parsed = json.loads(value) if value else None
    except ValueError:
        return None
    port = parsed.get("kv_events_port") if isinstance(parsed, dict) else None
    return port if isinstance(port, int) and not isinstance(port, bool) and 1024 <= port <= 65535 else None


class WorkerRegistry:
    """Registered workers by (role, host, port); only healthy ones are offered for routing."""

    def __init__(self, session: aiohttp.ClientSession, health_interval: float, health_timeout: float,
                 on_change: Callable[[], None] | None = None) -> None:
        self._session = session
        self._health_interval = health_interval
        self._health_timeout = aiohttp.ClientTimeout(total=health_timeout)
        self._workers: dict[WorkerKey, Worker] = {}
        self._changed = asyncio.Event()
        self._on_change = on_change
        self._probes: set[asyncio.Task] = set()

    # -- membership -------------------------------------------------------------------------
    def workers(self, role: str | None = None) -> list[Worker]:
        return [w for w in self._workers.values() if role is None or w.role == role]

    def usable(self, role: str) -> list[Worker]:
        return [w for w in self._workers.values() if w.healthy and w.role == role]

    def add(self, role: str, host: str, port: int, source: str) -> Worker:
        key = (role, host, port)
        worker = self._workers.get(key)
        if worker is None:
            worker = self._workers[key] = Worker(role, host, port)
            log.info("worker registered: %s %s", role, worker.address)
            self._spawn_probe(worker)
        worker.sources.add(source)
        return worker

    def remove(self, key: WorkerKey, source: str) -> None:
        worker = self._workers.get(key)
        if worker is None:
            return
        worker.sources.discard(source)
        if not worker.sources:
            del self._workers[key]
            worker.healthy = False
            log.info("worker removed: %s %s", worker.role, worker.address)
            self._notify()

    def replace_source(self, source: str, keys: Iterable[WorkerKey]) -> None:
        """Make the workers known through source exactly keys (used by a full etcd resync)."""
        wanted = set(keys)
        for key in [k for k, w in self._workers.items() if source in w.sources and k not in wanted]:
            self.remove(key, source)
        for role, host, port in wanted:
            self.add(role, host, port, source)

    def note_refused(self, worker: Worker) -> None:
        """A request could not connect: back the worker off for a short, growing while (workers.BACKOFF_*).
        It stays in the pool; only its /health probe takes it out."""
        delay = worker.refused(asyncio.get_running_loop().time())
        log.warning("worker refused a connection, backed off %.0f ms: %s %s", delay * 1e3, worker.role, worker.address)

    # -- waiting for capacity ---------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_change is not None:
            self._on_change()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait without blocking the loop until predicate holds or timeout passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return predicate()
        return True

    # -- health -----------------------------------------------------------------------------
    async def probe(self, worker: Worker) -> bool:
        try:
            async with self._session.get(worker.base_url + "/health", timeout=self._health_timeout) as reply:
                ok = reply.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            ok = False
        if self._workers.get((worker.role, worker.host, worker.port)) is not worker:
            return ok
        if ok != worker.healthy:
            worker.healthy = ok
            log.info("worker %s: %s %s", "healthy" if ok else "unhealthy", worker.role, worker.address)
            self._notify()
        return ok

    def _spawn_probe(self, worker: Worker) -> None:
        task = asyncio.get_running_loop().create_task(self.probe(worker))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def run_health_checks(self) -> None:
        while True:
            workers = self.workers()
            if workers:
                await asyncio.gather(*(self.probe(w) for w in workers))
            await asyncio.sleep(self._health_interval)

    async def close(self) -> None:
        for task in list(self._probes):
            task.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)


class EtcdDiscovery:
    """Keeps the registry equal to the etcd keys: a watch for changes, a full re-read on start,
    after any watch failure and every resync interval (so a missed event heals itself).
    In standard mode (`standard=True`) only /workers/standard/ keys count, each as a STANDALONE worker."""

    def __init__(self, registry: WorkerRegistry, gateway: EtcdGateway, prefix: str, resync_interval: float,
                 retry_interval: float, standard: bool = False, policy: WorkerPolicy | None = None) -> None:
        self._registry = registry
        self._policy = policy or WorkerPolicy()
        self._gateway = gateway
        self._prefix = prefix
        self._resync_interval = resync_interval
        self._retry_interval = retry_interval
        self._roles = (REGISTERED_STANDARD,) if standard else (PREFILL, DECODE)
        self._role_override = STANDALONE if standard else None
        self.synced = asyncio.Event()
        self.resyncs = 0

    def _key(self, etcd_key: str) -> WorkerKey | None:
        parsed = parse_worker_key(etcd_key, self._prefix, self._roles)
        if parsed is not None and self._role_override is not None:
            return self._role_override, parsed[1], parsed[2]
        return parsed

    async def resync(self) -> int:
        kvs, revision = await self._gateway.get_prefix(self._prefix)
        self._apply_snapshot(kvs)
        self.resyncs += 1
        self.synced.set()
        return revision

    def _apply_snapshot(self, kvs: list[KeyValue]) -> None:
        keys: list[WorkerKey] = []
        ports: dict[WorkerKey, int | None] = {}
        for kv in kvs:
            key = self._key(kv.key)
            if key is not None and self._policy.admits(key, len(keys)):
                keys.append(key)
                ports[key] = kv_events_port(kv.value)
        self._registry.replace_source(ETCD_SOURCE, keys)
        for worker in self._registry.workers():
            key = (worker.role, worker.host, worker.port)
            if key in ports:
                worker.kv_events_port = ports[key]

    async def _watch_once(self, revision: int) -> None:
        async for event in self._gateway.watch_prefix(self._prefix, revision + 1):
            key = self._key(event.key)
            if key is None:
                continue
            if event.deleted:
                self._registry.remove(key, ETCD_SOURCE)
            elif self._policy.admits(key, len(self._registry.workers())):
                self._registry.add(*key, ETCD_SOURCE).kv_events_port = kv_events_port(event.value)
        raise EtcdError("watch stream ended")

    async def run(self) -> None:
        while True:
            try:
                revision = await self.resync()
                watch = asyncio.ensure_future(self._watch_once(revision))
                try:
                    while True:
                        done, _ = await asyncio.wait({watch}, timeout=self._resync_interval)
                        if done:
                            watch.result()
                        await self.resync()
                finally:
                    watch.cancel()
                    await asyncio.gather(watch, return_exceptions=True)
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                log.info("etcd watch revision compacted, re-reading")
            except (EtcdError, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                log.warning("etcd discovery interrupted (%s); retrying in %.1fs", exc, self._retry_interval)
                await asyncio.sleep(self._retry_interval)


def add_static(registry: WorkerRegistry, endpoints: Iterable[tuple[str, int]]) -> None:
    for host, port in endpoints:
        registry.add(STANDALONE, host, port, STATIC_SOURCE)
