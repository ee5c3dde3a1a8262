"""Control-plane rehearsal on loopback: a three-member etcd cluster, two DiStack proxies (real processes) behind a
real TCP load balancer with health checks (HAProxy, standing in for the internal NLB), and fake vLLM workers
streaming to clients all along.

A proxy is killed outright (SIGKILL), then started again; then the etcd member both proxies read first is killed,
then started again. Only the requests in flight on the killed proxy may fail; losing an etcd member loses no
registration and no request. The figures (streams, failures, seconds back to full health) go to the run's summary.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from diproxy.testing.etcd_cluster import EtcdCluster
from diproxy.testing.etcd_server import free_port
from diproxy.testing.fake_worker import Behaviour, FakeWorker
from tests.proxy.conftest import FAST_FLAGS, post_stream, wait_until
from tests.rehearsal.load_balancer import LoadBalancer
from tests.tools import require

PREFIX = "/workers/"
CLIENTS = 6
# Streams of 6 tokens 10 ms apart (~60 ms each): a killed proxy always has some in flight.
PACE = Behaviour(tokens=6, token_interval=0.01, headers_first=True)


@dataclass
class Tally:
    streamed: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)  # (client, why)
    running: bool = True

    async def more(self, count: int, what: str) -> None:
        """Until COUNT more streams completed: the rehearsal paces itself by traffic, not by timers."""
        wanted = self.streamed + count
        await wait_until(lambda: self.streamed >= wanted, timeout=10.0, what=what)


class Proxy:
    """One DiStack proxy process, as systemd runs it on a control host."""

    def __init__(self, port: int, etcd_members: str) -> None:
        self.port = port
        self.args = [sys.executable, "-m", "diproxy", "--host", "127.0.0.1", "--port", str(port), "--engine", "nixl",
                     "--etcd", etcd_members, "--etcd-prefix", PREFIX, *FAST_FLAGS]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "DIPROXY_LOG_LEVEL": "warning"})

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=5)


async def client_loop(client: int, url: str, tally: Tally, session: aiohttp.ClientSession) -> None:
    """One client: a stream at a time, back to back, so it has exactly one request in flight."""
    while tally.running:
        try:
            result = await post_stream(session, url + "/v1/completions", {"prompt": "x", "max_tokens": 6})
            ok = result.status == 200 and result.done and not result.errors
            reason = f"status {result.status} {result.raw[:120]!r}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if ok:
            tally.streamed += 1
        else:
            tally.failed.append((client, reason))


def test_losing_a_proxy_or_an_etcd_member_fails_only_the_killed_proxys_requests(report_figures) -> None:
    require("etcd")
    balancer_binary = require("haproxy")
    with EtcdCluster() as cluster:
        members = ",".join(f"{h}:{p}" for h, p in (m.address for m in cluster.members))
        proxies = {"a": Proxy(free_port(), members), "b": Proxy(free_port(), members)}
        balancer = LoadBalancer(balancer_binary, free_port(), {name: p.port for name, p in proxies.items()})
        try:
            for proxy in proxies.values():
                proxy.start()
            figures = asyncio.run(asyncio.wait_for(rehearse(cluster, proxies, balancer), 60))
        finally:
            balancer.close()
            for proxy in proxies.values():
                if proxy.process is not None and proxy.process.poll() is None:
                    proxy.kill()
    report_figures("control-plane rehearsal", figures)


async def rehearse(cluster: EtcdCluster, proxies: dict[str, Proxy], balancer: LoadBalancer) -> str:
    # Workers register through the member the proxies read last, so killing the first member tests the proxies'
    # failover and leaves the workers' leases alone (a worker's registrar fails over the same way).
    registrar = "%s:%d" % cluster.members[1].address
    workers = [await FakeWorker(role, etcd=registrar, prefix=PREFIX, label=f"{role[0].upper()}{i}",
                                behaviour=PACE).start() for role in ("prefill", "decode") for i in range(2)]
    tally = Tally()
    try:
        await asyncio.to_thread(balancer.wait, {"a": "UP", "b": "UP"}, 20.0)
        async with aiohttp.ClientSession() as session:
            clients = [asyncio.create_task(client_loop(i, balancer.url, tally, session)) for i in range(CLIENTS)]
            await tally.more(3 * CLIENTS, "traffic through both proxies")

            # 1. A proxy dies: the balancer stops sending it requests; only its in-flight requests fail.
            proxies["a"].kill()
            await asyncio.to_thread(balancer.wait, {"a": "DOWN", "b": "UP"})
            failed_on_kill = len(tally.failed)
            proxies["a"].start()
            start = time.monotonic()
            await asyncio.to_thread(balancer.wait, {"a": "UP", "b": "UP"}, 20.0)
            proxy_back = time.monotonic() - start
            await tally.more(3 * CLIENTS, "traffic through both proxies again")

            # 2. The etcd member the proxies read first dies: they read another; nothing fails.
            cluster.stop_member(cluster.members[0])
            failed_before_etcd = len(tally.failed)
            await tally.more(3 * CLIENTS, "traffic while an etcd member is down")
            start = time.monotonic()
            cluster.start_member(cluster.members[0])
            await asyncio.to_thread(cluster.wait_healthy, [cluster.members[0]])
            etcd_back = time.monotonic() - start
            await tally.more(CLIENTS, "traffic after the member rejoined")
            tally.running = False
            await asyncio.gather(*clients)
        kvs = cluster.etcdctl("get", PREFIX, "--prefix", "--keys-only").stdout.split()
        assert len(kvs) == 4, f"registrations lost: {kvs}"
        assert len(tally.failed) == failed_before_etcd, f"requests failed while an etcd member was down: {tally.failed}"
        # Each client has one request in flight: a failure beyond one per client would be a request sent after the
        # proxy died, which the load balancer should have retried on the other proxy or not sent there.
        per_client = [client for client, _ in tally.failed]
        assert all(per_client.count(c) == 1 for c in set(per_client)), tally.failed
        return (f"{tally.streamed} streams through 2 proxies, {failed_on_kill} failed, each one the request a client "
                f"had in flight on the killed proxy; killed proxy back in service {proxy_back:.2f}s after restart; "
                f"killed etcd member healthy {etcd_back:.2f}s after restart, 0 registrations lost")
    finally:
        tally.running = False
        for worker in workers:
            await worker.stop()
