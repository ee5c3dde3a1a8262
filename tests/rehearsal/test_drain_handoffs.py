"""A NIXL prefill's drain waits on the proxies' count of its pending KV handoffs (published in etcd), and ends as soon
as that count is zero, whatever its KV cache usage says; with no proxy to ask it falls back to the cache usage and says
so. On loopback: a real etcd, the DiStack proxy, fake vLLM workers, the real di-register and ops/drain.sh."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from diproxy.testing.etcd_server import EtcdServer
from diproxy.testing.fake_imds import FakeImds
from diproxy.testing.fake_worker import Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy
from tests.proxy.conftest import di_flags, wait_ready, wait_until
from tests.rehearsal.test_scale_in import INSTANCE_ID, PREFIX, SCRIPTS, Node, node_env
from tests.tools import needs

PENDING = 5
PREFILL_UNIT = "di-vllm@0.service"


def _untracked_blocks(prefill: FakeWorker) -> None:
    """Blocks the prefill holds that no proxy handoff knows of (e.g. a canary's): its KV cache usage stays above 0."""
    prefill._hold_kv("held-outside-the-proxy")


async def _drain(node: Node) -> asyncio.subprocess.Process:
    log = open(node.state / "drain.log", "w", encoding="utf-8")
    try:
        return await asyncio.create_subprocess_exec("bash", str(SCRIPTS / "ops" / "drain.sh"), "0", "20",
                                                    env={**node.env, "DI_LIB_DIR": str(SCRIPTS / "lib")},
                                                    stdout=log, stderr=log)
    finally:
        log.close()


async def _polls(prefill: FakeWorker, more: int) -> None:
    """The drain has polled the prefill MORE times from now (it is waiting, not done)."""
    start = prefill.metrics_reads
    await wait_until(lambda: prefill.metrics_reads >= start + more, what=f"{more} drain polls")


@needs("etcd")
def test_prefill_drain_ends_when_the_proxies_count_no_pending_handoff(tmp_path: Path) -> None:
    async def scenario() -> None:
        prefill = await FakeWorker("prefill", label="VP", behaviour=Behaviour(tokens=1, first_token_delay=0.3)).start(
            register=False)
        decode = await FakeWorker("decode", etcd=etcd.address, prefix=PREFIX, label="D",
                                  behaviour=Behaviour(tokens=2)).start()
        node = Node(tmp_path / "state", node_env(tmp_path, etcd.address, imds, prefill, decode),
                    {PREFILL_UNIT: prefill})
        try:
            async with RunningProxy(di_flags("nixl", etcd.address, PREFIX, "--pair-wait-timeout", "10")) as proxy, \
                    aiohttp.ClientSession() as session:
                node.start("di-register", "0", pid_unit="di-register@0.service")
                stopper = asyncio.create_task(node.serve_stop_requests())
                registry = proxy.state.registry
                handoffs = proxy.state.protocol.handoffs
                await wait_ready(session, proxy.url)
                await wait_until(lambda: registry.usable("prefill") and registry.usable("decode"), what="pool")
                calls = [asyncio.create_task(session.post(proxy.url + "/v1/completions",
                                                          json={"prompt": f"x{i}", "max_tokens": 2}))
                         for i in range(PENDING)]
                await wait_until(lambda: prefill.in_flight == PENDING, what="the prefills under way")
                decode.healthy = False  # the handoffs stay pending past prefill
                await wait_until(lambda: handoffs.pending(prefill.address) == PENDING, what="handoffs pending")
                _untracked_blocks(prefill)

                drain = await _drain(node)
                await _polls(prefill, 10)
                assert drain.returncode is None, node.logs()  # waiting on the pending handoffs
                decode.healthy = True  # the decodes start: the proxies' count falls to zero
                await wait_until(lambda: handoffs.total() == 0, what="no handoff pending")
                zero_at = time.monotonic()
                await asyncio.wait_for(drain.wait(), 5)
                drained_after = time.monotonic() - zero_at
                for call in calls:
                    (await call).release()
                stopper.cancel()
        finally:
            node.close()
            await prefill.stop()
            await decode.stop()
        log = (node.state / "drain.log").read_text()
        assert drain.returncode == 0, node.logs()
        assert "the proxies count no KV handoff pending" in log and "cannot ask the proxies" not in log, log
        # Its cache usage never reached zero (the untracked blocks): the proxies' count alone ended the wait.
        assert prefill.kv_blocks_held > 0
        assert drained_after < 2.0, drained_after

    with EtcdServer() as etcd, FakeImds({"instance-id": INSTANCE_ID, "local-ipv4": "127.0.0.1"}) as imds:
        asyncio.run(asyncio.wait_for(scenario(), 30))


@needs("etcd")
def test_prefill_drain_falls_back_to_kv_cache_usage_when_no_proxy_publishes(tmp_path: Path) -> None:
    async def scenario() -> None:
        prefill = await FakeWorker("prefill", label="VP").start(register=False)
        decode = await FakeWorker("decode", label="D").start(register=False)
        node = Node(tmp_path / "state", node_env(tmp_path, etcd.address, imds, prefill, decode),
                    {PREFILL_UNIT: prefill})
        try:
            node.start("di-register", "0", pid_unit="di-register@0.service")
            stopper = asyncio.create_task(node.serve_stop_requests())
            _untracked_blocks(prefill)
            drain = await _drain(node)
            await _polls(prefill, 10)
            assert drain.returncode is None, node.logs()  # held blocks, and no proxy to say they are not needed
            for blocks in prefill.kv_blocks.values():
                blocks.reads += 1  # a decode read them: the cache usage falls to zero
            await asyncio.wait_for(drain.wait(), 5)
            stopper.cancel()
        finally:
            node.close()
            await prefill.stop()
            await decode.stop()
        log = (node.state / "drain.log").read_text()
        assert drain.returncode == 0, node.logs()
        assert "cannot ask the proxies for pending KV handoffs (no proxy publishes" in log, log

    with EtcdServer() as etcd, FakeImds({"instance-id": INSTANCE_ID, "local-ipv4": "127.0.0.1"}) as imds:
        asyncio.run(asyncio.wait_for(scenario(), 30))
