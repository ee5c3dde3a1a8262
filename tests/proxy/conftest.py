"""Fixtures for proxy tests: a real etcd on loopback, a per-test key prefix, and helpers to drive streams."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from diproxy.testing.etcd_server import EtcdServer
from diproxy.testing.fake_worker import Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy
from tests.tools import require

TEST_DEADLINE = 20.0
# Short timeouts keep failure scenarios fast; every test may override them.
FAST_FLAGS = ["--health-interval", "0.1", "--health-timeout", "0.5", "--connect-timeout", "0.5",
              "--first-token-timeout", "2", "--idle-timeout", "2", "--pair-wait-timeout", "2",
              "--etcd-retry-interval", "0.1", "--resync-interval", "5"]
ENGINES = ("nixl", "neuron-connector")


def di_flags(engine: str, etcd: str, prefix: str, *extra: str) -> list[str]:
    """A DI proxy speaking engine's protocol to the workers under prefix, with the fast timeouts."""
    return ["--engine", engine, "--etcd", etcd, "--etcd-prefix", prefix, *FAST_FLAGS, *extra]


def _serve_etcd() -> Iterator[EtcdServer]:
    require("etcd")
    server = EtcdServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    yield from _serve_etcd()


@pytest.fixture
def private_etcd() -> Iterator[EtcdServer]:
    """An etcd of the test's own, for tests that stop and restart it."""
    yield from _serve_etcd()


@pytest.fixture
def prefix() -> str:
    """A key prefix of the test's own, so leases left by other tests cannot leak into it."""
    return f"/t-{uuid.uuid4().hex[:8]}/workers/"


def run(scenario: Callable[[], Awaitable[Any]], deadline: float = TEST_DEADLINE) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(scenario(), deadline)

    return asyncio.run(bounded())


@dataclass
class StreamResult:
    status: int
    headers: dict[str, str]
    events: list[Any] = field(default_factory=list)  # decoded JSON payloads, or "[DONE]"
    raw: str = ""

    @property
    def texts(self) -> list[str]:
        out = []
        for event in self.events:
            if isinstance(event, dict) and event.get("choices"):
                choice = event["choices"][0]
                out.append(choice.get("text") if "text" in choice else choice.get("delta", {}).get("content"))
        return out

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"

    @property
    def errors(self) -> list[Any]:
        return [e for e in self.events if isinstance(e, dict) and "error" in e]


async def post_stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> StreamResult:
    async with session.post(url, json={**body, "stream": True}, headers=headers) as reply:
        raw = await reply.text()
        result = StreamResult(reply.status, dict(reply.headers), raw=raw)
    if result.status == 200:
        for block in raw.split("\n\n"):
            if block.startswith("data: "):
                data = block[len("data: "):]
                result.events.append(data if data == "[DONE]" else json.loads(data))
    return result


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_ready(session: aiohttp.ClientSession, proxy_url: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with session.get(proxy_url + "/ready") as reply:
            if reply.status == 200:
                return
        if loop.time() > deadline:
            raise AssertionError("proxy never became ready")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def di_stack(engine: str, etcd: str, prefix: str, prefills: list[Behaviour], decodes: list[Behaviour],
                   *flags: str) -> AsyncIterator[tuple[list[FakeWorker], list[FakeWorker], RunningProxy,
                                                       aiohttp.ClientSession]]:
    """Fake prefill and decode workers registered under prefix, behind a ready proxy of ENGINE (nixl, lmcache); all
    stopped afterwards. With lmcache the prefill workers report their transfers done to the proxy's socket."""
    workers: list[FakeWorker] = []
    try:
        p = [await FakeWorker("prefill", etcd=etcd, prefix=prefix, label=f"P{i}", behaviour=b).start()
             for i, b in enumerate(prefills)]
        workers += p
        d = [await FakeWorker("decode", etcd=etcd, prefix=prefix, label=f"D{i}" if len(decodes) > 1 else "D",
                              behaviour=b).start() for i, b in enumerate(decodes)]
        workers += d
        async with RunningProxy(di_flags(engine, etcd, prefix, *flags)) as proxy, \
                aiohttp.ClientSession() as session:
            if engine == "lmcache":
                for worker in p:
                    worker.lmcache_proxy = proxy.lmcache_notify
            if p and d:
                await wait_ready(session, proxy.url)
                registry = proxy.state.registry
                assert registry is not None
                await wait_until(lambda: len(registry.usable("prefill")) == len(p)
                                 and len(registry.usable("decode")) == len(d), what="all workers usable")
            yield p, d, proxy, session
    finally:
        for worker in workers:
            await worker.stop()
