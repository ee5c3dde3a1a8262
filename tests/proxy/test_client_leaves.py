"""A client that leaves before its first byte costs no more work: its prefill is cancelled and decode never starts."""

from __future__ import annotations

import asyncio

import aiohttp

from diproxy.testing.fake_worker import Behaviour
from tests.proxy.conftest import di_stack, run, wait_until


def test_a_client_that_leaves_during_prefill_cancels_it_and_never_reaches_decode(etcd, prefix) -> None:
    async def scenario() -> None:
        slow_prefill = Behaviour(tokens=1, first_token_delay=5.0)
        async with di_stack("nixl", etcd.address, prefix, [slow_prefill], [Behaviour(tokens=4)]) as (p, d, proxy, _):
            async with aiohttp.ClientSession() as client:
                call = asyncio.create_task(client.post(proxy.url + "/v1/completions",
                                                       json={"prompt": "x", "max_tokens": 4}))
                await wait_until(lambda: p[0].in_flight == 1, what="the prefill answering")
                call.cancel()  # the client goes away: its connection closes
            # Well before the prefill's 5 s answer: the proxy's handler was cancelled, and with it the prefill call.
            await wait_until(lambda: p[0].in_flight == 0, timeout=2.0, what="the prefill call cancelled")
            await wait_until(lambda: proxy.state.admission.in_flight == 0, timeout=2.0, what="the request ended")
            assert d[0].requests == []

    run(scenario)
