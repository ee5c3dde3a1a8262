"""No stranded KV: every handoff (prefill answered with kv_transfer_params, decode not started yet) is tracked per
prefill endpoint, published in etcd for the drain, and a client that leaves before its decode is sent still has its
prefill's blocks read and freed by a one-token decode."""

from __future__ import annotations

import asyncio

import aiohttp

from diproxy.etcd_gateway import EtcdGateway
from diproxy.handoff_registry import handoffs_root
from diproxy.testing.fake_worker import Behaviour
from tests.proxy.conftest import di_stack, post_stream, run, wait_until

CLIENTS = 100


async def _etcd_pending(etcd: str, prefix: str, prefill: str) -> tuple[int, int]:
    """(proxies publishing, handoffs pending from PREFILL) as the drain reads them from etcd."""
    host, port = etcd.rsplit(":", 1)
    root = handoffs_root(prefix)
    async with aiohttp.ClientSession() as session:
        gateway = EtcdGateway(session, host, int(port))
        proxies, _ = await gateway.get_prefix(f"{root}proxies/")
        counts, _ = await gateway.get_prefix(f"{root}pending/{prefill.replace(':', '/')}/")
    return len(proxies), sum(int(kv.value) for kv in counts)


def test_clients_that_leave_after_prefill_leave_no_pending_handoff_and_no_held_blocks(etcd, prefix) -> None:
    async def scenario() -> None:
        prefill = Behaviour(tokens=1, first_token_delay=0.3)
        # 100 clients from one address: above the default per-client cap, which this test is not about.
        async with di_stack("nixl", etcd.address, prefix, [prefill], [Behaviour(tokens=4)],
                            "--pair-wait-timeout", "10", "--max-in-flight-per-client", "256") as (p, d, proxy, _):
            handoffs = proxy.state.protocol.handoffs
            registry = proxy.state.registry
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as client:
                calls = [asyncio.create_task(client.post(proxy.url + "/v1/completions",
                                                         json={"prompt": f"x{i}", "max_tokens": 4}))
                         for i in range(CLIENTS)]
                await wait_until(lambda: p[0].in_flight == CLIENTS, timeout=15.0, what="every prefill under way")
                # No decode can take the KV once the prefills answer: the requests wait for one, past prefill.
                d[0].healthy = False
                await wait_until(lambda: not registry.usable("decode"), what="the decode out of the pool")
                await wait_until(lambda: handoffs.pending(p[0].address) == CLIENTS, timeout=15.0,
                                 what="every handoff pending")
                assert p[0].kv_blocks_held == 2 * CLIENTS and d[0].requests == []
                await wait_until_async(lambda: _etcd_pending(etcd.address, prefix, p[0].address), (1, CLIENTS))
                assert 'diproxy_kv_handoffs_pending{prefill="%s"} 100' % p[0].address in proxy.state.metrics.render()
                for call in calls:
                    call.cancel()  # every client leaves after its prefill, before any decode had its request
                await asyncio.gather(*calls, return_exceptions=True)
            await wait_until(lambda: proxy.state.admission.in_flight == 0, what="the client requests ended")
            assert handoffs.pending(p[0].address) == CLIENTS  # the releases wait for a decode
            d[0].healthy = True
            await wait_until(lambda: handoffs.total() == 0, timeout=3.0, what="no handoff pending")
            assert p[0].kv_blocks_held == 0 and p[0].kv_reads == CLIENTS
            assert handoffs.releases.value("released") == CLIENTS
            # The one-token decodes: one token, not streamed, the prefill's kv_transfer_params with its routable IP.
            assert {r.body["max_tokens"] for r in d[0].requests} == {1}
            assert not any(r.body.get("stream") for r in d[0].requests)
            await wait_until_async(lambda: _etcd_pending(etcd.address, prefix, p[0].address), (1, 0))

    run(scenario)


async def wait_until_async(read, wanted, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await read()) != wanted:
        assert loop.time() < deadline, f"etcd shows {got}, not {wanted}"
        await asyncio.sleep(0.02)


def test_a_handoff_ends_when_decode_starts_and_its_time_is_observed(etcd, prefix) -> None:
    async def scenario() -> None:
        async with di_stack("nixl", etcd.address, prefix, [Behaviour(tokens=1)],
                            [Behaviour(tokens=4, first_token_delay=0.05)]) as (p, d, proxy, session):
            handoffs = proxy.state.protocol.handoffs
            result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x", "max_tokens": 4})
            assert result.status == 200 and result.done
            assert handoffs.total() == 0
            assert handoffs.handoff_seconds.count() == 1
            assert handoffs.releases.values == {}
            assert p[0].kv_blocks_held == 0

    run(scenario)


def test_a_client_that_leaves_while_decode_has_its_request_is_left_to_vllm(etcd, prefix) -> None:
    """Once a decode may hold the request, its own abort (or its pull) frees the blocks: no second read."""
    async def scenario() -> None:
        async with di_stack("nixl", etcd.address, prefix, [Behaviour(tokens=1)],
                            [Behaviour(tokens=4, fail="hang")]) as (p, d, proxy, _):
            handoffs = proxy.state.protocol.handoffs
            async with aiohttp.ClientSession() as client:
                call = asyncio.create_task(client.post(proxy.url + "/v1/completions",
                                                       json={"prompt": "x", "max_tokens": 4, "stream": True}))
                await wait_until(lambda: d[0].in_flight == 1, what="decode answering")
                assert handoffs.total() == 1
                call.cancel()
                await asyncio.gather(call, return_exceptions=True)
            await wait_until(lambda: handoffs.total() == 0, what="the handoff closed")
            await wait_until(lambda: d[0].in_flight == 0, what="the decode call cancelled")
            assert len(d[0].requests) == 1 and handoffs.releases.values == {}

    run(scenario)
