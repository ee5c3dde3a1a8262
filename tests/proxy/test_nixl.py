"""The NIXL protocol through the proxy, against fake workers that speak it as vLLM's NixlConnector does: prefill
first with kv_transfer_params asked, decode with prefill's (remote_host rewritten), retries per stage, killed
workers, no workers, a prefill that stops on EOS before max_tokens, and the per-role load and inter-token latency
the proxy measures."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from diproxy.protocols.nixl import ASK_REMOTE_DECODE
from diproxy.testing.fake_worker import PREFILL_RETURNS, Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy
from tests.proxy.conftest import di_stack, post_stream, run, wait_until

UID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _stack(etcd: str, prefix: str, prefills: list[Behaviour], decodes: list[Behaviour], *flags: str):
    return di_stack("nixl", etcd, prefix, prefills, decodes, *flags)


def _handed_over(prefill: FakeWorker, decode: FakeWorker) -> dict:
    """Check the last request pair followed the protocol; returns the kv_transfer_params decode received."""
    p_req, d_req = prefill.requests[-1], decode.requests[-1]
    assert re.fullmatch(UID, p_req.request_id or ""), p_req.request_id
    assert d_req.request_id == p_req.request_id, "both legs carry the same X-Request-Id"
    assert p_req.at <= d_req.at, "prefill goes first"
    params = d_req.body["kv_transfer_params"]
    assert sorted(params) == sorted(PREFILL_RETURNS)
    # Prefill reported its bind address; decode got the prefill worker's IP, everything else as prefill said.
    held = prefill.kv_blocks[params["remote_request_id"]]
    assert params == {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": held.block_ids,
                      "remote_engine_id": prefill.engine_id, "remote_request_id": held.request_id,
                      "remote_host": prefill.host, "remote_port": prefill.side_channel_port, "tp_size": 1}
    assert held.reads == 1
    return params


def test_streaming_completion_and_chat_follow_the_nixl_protocol(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _stack(etcd.address, prefix, [Behaviour(tokens=5)], [Behaviour(tokens=5)]) as (
                (prefill,), (decode,), proxy, session):
            body = {"model": "m", "prompt": "hello", "max_tokens": 5, "min_tokens": 2, "temperature": 0,
                    "stream_options": {"include_usage": True},
                    "kv_transfer_params": {"do_remote_prefill": True, "remote_host": "10.9.9.9"}}
            result = await post_stream(session, proxy.url + "/v1/completions", body)

            assert result.status == 200, result.raw
            client_body = {**body, "stream": True}
            del client_body["kv_transfer_params"]
            sent_to_prefill = {k: v for k, v in client_body.items() if k not in ("min_tokens", "stream_options")}
            assert prefill.requests[-1].body == {**sent_to_prefill, "stream": False, "max_tokens": 1,
                                                 "kv_transfer_params": ASK_REMOTE_DECODE}
            params = _handed_over(prefill, decode)
            assert decode.requests[-1].body == {**client_body, "kv_transfer_params": params}
            # Decode's whole answer, every token once, in order; prefill's token is not shown.
            assert result.texts == [" D0", " D1", " D2", " D3", " D4"]
            assert result.done and result.events.count("[DONE]") == 1
            uid = prefill.requests[-1].request_id
            assert {e["id"] for e in result.events if isinstance(e, dict)} == {f"cmpl-{uid}"}
            assert result.headers["X-Request-ID"] == f"cmpl-{uid}"

            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 3,
                    "min_completion_tokens": 1}
            result = await post_stream(session, proxy.url + "/v1/chat/completions", chat)
            assert result.status == 200 and result.done
            assert result.texts == [" D0", " D1", " D2"]
            sent = prefill.requests[-1].body
            assert sent["max_tokens"] == 1 and sent["max_completion_tokens"] == 1 and sent["stream"] is False
            assert "min_completion_tokens" not in sent and decode.requests[-1].body["min_completion_tokens"] == 1
            _handed_over(prefill, decode)
            uid = prefill.requests[-1].request_id
            assert {e["id"] for e in result.events if isinstance(e, dict)} == {f"chatcmpl-{uid}"}

    run(scenario)


def test_non_streaming_completion_and_chat_return_decode_answer(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _stack(etcd.address, prefix, [Behaviour(tokens=3)], [Behaviour(tokens=3)]) as (
                (prefill,), (decode,), proxy, session):
            async with session.post(proxy.url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}) as r:
                assert r.status == 200
                answer = await r.json()
            params = _handed_over(prefill, decode)
            assert "max_completion_tokens" not in prefill.requests[-1].body
            assert decode.requests[-1].body == {"prompt": "x", "max_tokens": 3, "kv_transfer_params": params}
            assert answer["id"] == f"cmpl-{prefill.requests[-1].request_id}"
            assert answer["choices"][0]["text"] == " D0 D1 D2"

            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            async with session.post(proxy.url + "/v1/chat/completions", json=chat) as r:
                assert r.status == 200
                answer = await r.json()
            _handed_over(prefill, decode)
            assert answer["id"] == f"chatcmpl-{prefill.requests[-1].request_id}"
            assert answer["choices"][0]["message"]["content"] == " D0 D1"

    run(scenario)


def test_prefill_stopping_on_eos_hands_nothing_over_and_decode_prefills_locally(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _stack(etcd.address, prefix, [Behaviour(tokens=3, eos_after=0)], [Behaviour(tokens=3)]) as (
                (prefill,), (decode,), proxy, session):
            body = {"prompt": "x", "max_tokens": 3, "kv_transfer_params": {"remote_host": "10.9.9.9"}}
            result = await post_stream(session, proxy.url + "/v1/completions", body)
            assert result.status == 200 and result.done and result.texts == [" D0", " D1", " D2"]
            assert prefill.kv_blocks == {}
            # Neither prefill's nothing nor the client's own params reach decode.
            assert decode.requests[-1].body == {"prompt": "x", "max_tokens": 3, "stream": True}
            assert proxy.state.protocol.kv_transfer_skipped.value() == 1
            async with session.get(proxy.url + "/metrics") as r:
                assert "diproxy_kv_transfer_skipped_total 1" in (await r.text()).splitlines()

    run(scenario)


def test_fake_decode_refuses_parameters_the_proxy_did_not_rewrite(etcd, prefix) -> None:
    """The decode check can fail: prefill's own answer (remote_host 0.0.0.0) or a missing key gets HTTP 400."""
    async def scenario() -> None:
        prefill = await FakeWorker("prefill", behaviour=Behaviour(tokens=2)).start()
        decode = await FakeWorker("decode", behaviour=Behaviour(tokens=2)).start()
        try:
            async with aiohttp.ClientSession() as session:
                ask = {"prompt": "x", "max_tokens": 1, "stream": False, "kv_transfer_params": ASK_REMOTE_DECODE}
                async with session.post(f"http://{prefill.address}/v1/completions", json=ask) as r:
                    params = (await r.json())["kv_transfer_params"]
                assert params["remote_host"] == "0.0.0.0" and sorted(params) == sorted(PREFILL_RETURNS)
                for wrong in (params, {**params, "remote_host": prefill.host, "remote_block_ids": None},
                              {**params, "remote_host": prefill.host, "remote_request_id": "other"}):
                    async with session.post(f"http://{decode.address}/v1/completions",
                                            json={"prompt": "x", "kv_transfer_params": wrong}) as r:
                        assert r.status == 400
                        assert "fake decode" in (await r.json())["error"]["message"]
                async with session.post(f"http://{decode.address}/v1/completions",
                                        json={"prompt": "x", "kv_transfer_params": {**params,
                                                                                    "remote_host": prefill.host}}) as r:
                    assert r.status == 200
        finally:
            await prefill.stop()
            await decode.stop()

    run(scenario)


def test_prefill_failure_retries_on_another_prefill(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _stack(etcd.address, prefix, [Behaviour(fail="status500"), Behaviour(tokens=3)],
                          [Behaviour(tokens=3)], "--selection", "round-robin") as (
                (broken, good), (decode,), proxy, session):
            results = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"}) for _ in range(4)]
            assert all(r.status == 200 and r.done and r.texts == [" D0", " D1", " D2"] for r in results)
            assert len(broken.requests) >= 1 and len(good.requests) == 4
            # Decode saw only the successful prefills, each with its own blocks.
            assert len(decode.requests) == 4 and good.kv_reads == 4
            assert proxy.state.metrics.retries.value() == len(broken.requests)
            assert proxy.state.metrics.errors.value("upstream_status") == len(broken.requests)

    run(scenario)


def test_decode_dying_before_first_byte_retries_decode_with_the_same_blocks(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _stack(etcd.address, prefix, [Behaviour(tokens=3)],
                          [Behaviour(tokens=3, fail="die"), Behaviour(tokens=3)], "--selection", "round-robin") as (
                (prefill,), (dying, good), proxy, session):
            # Round robin: at least one of two requests meets the dying decode first.
            results = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"}) for _ in range(2)]
            assert all(r.status == 200 and r.done and r.texts == [" D10", " D11", " D12"] for r in results)
            assert len(prefill.requests) == 2, "prefill is not repeated for a decode retry"
            assert dying.requests and len(good.requests) == 2
            for lost in dying.requests:  # retried on the other decode: same X-Request-Id, same blocks
                retried = next(q for q in good.requests if q.request_id == lost.request_id)
                assert retried.body == lost.body and "kv_transfer_params" in lost.body
            assert proxy.state.metrics.retries.value() == len(dying.requests)

    run(scenario)


def test_no_decode_worker_gives_503_without_starting_a_prefill(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _stack(etcd.address, prefix, [Behaviour()], [], "--pair-wait-timeout", "0.1") as (
                (prefill,), _, proxy, session):
            registry = proxy.state.registry
            assert registry is not None
            await wait_until(lambda: len(registry.usable("prefill")) == 1, what="prefill usable")
            for stream in (True, False):
                async with session.post(proxy.url + "/v1/completions", json={"prompt": "x", "stream": stream}) as r:
                    assert r.status == 503 and r.headers["Retry-After"].isdigit()
                    assert (await r.json())["error"]["code"] == "no_worker_available"
            assert prefill.requests == [], "a prefill without a decode would hold its blocks for nothing"

    run(scenario)


def test_killed_prefill_and_killed_decode_fail_no_request(etcd, prefix) -> None:
    async def scenario() -> None:
        pace = Behaviour(tokens=4, token_interval=0.005)
        async with _stack(etcd.address, prefix, [pace, pace], [pace, pace]) as (
                (p_victim, _), (d_victim, _), proxy, session):
            results = []

            async def client(count: int) -> None:
                for _ in range(count):
                    results.append(await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"}))

            clients = [asyncio.create_task(client(12)) for _ in range(6)]
            await wait_until(lambda: len(p_victim.requests) >= 3, what="prefill victim serving")
            await p_victim.kill()
            await wait_until(lambda: len(d_victim.requests) >= 3, what="decode victim serving")
            await d_victim.kill()
            await asyncio.gather(*clients)
            assert len(results) == 72
            assert all(r.status == 200 for r in results), [r.raw for r in results if r.status != 200][:2]
            # A decode killed mid-stream can only end its streams with an error event; every other one is whole.
            whole = [r for r in results if not r.errors]
            assert all(r.done and len(r.texts) == 4 for r in whole)
            assert all(not r.done for r in results if r.errors)
            assert len(whole) >= len(results) - 6

    run(scenario, deadline=30)


def test_load_follows_requests_from_prefill_to_decode_and_chunk_gaps_feed_the_inter_token_latency(etcd,
                                                                                                  prefix) -> None:
    async def per_endpoint(session: aiohttp.ClientSession, proxy: RunningProxy, role: str) -> str:
        async with session.get(proxy.url + "/metrics") as reply:
            (line,) = [x for x in (await reply.text()).splitlines()
                       if x.startswith(f'diproxy_load_per_endpoint{{role="{role}"}} ')]
        return line.split()[-1]

    async def scenario() -> None:
        prefill, decode = Behaviour(tokens=4, first_token_delay=0.2), Behaviour(tokens=4, token_interval=0.1)
        async with _stack(etcd.address, prefix, [prefill], [decode, decode]) as (p, d, proxy, session):
            load, inter_token = proxy.state.metrics.load, proxy.state.metrics.inter_token
            streams = [asyncio.create_task(post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"}))
                       for _ in range(3)]
            await wait_until(lambda: load.requests["prefill"].value == 3, what="three requests in prefill")
            assert await per_endpoint(session, proxy, "prefill") == "3"  # on one prefill endpoint
            await wait_until(lambda: load.requests["decode"].value == 3, what="three requests streaming at decode")
            assert load.requests["prefill"].value == 0
            assert await per_endpoint(session, proxy, "decode") == "1.5"  # on two decode endpoints
            assert all(result.done for result in await asyncio.gather(*streams))
            assert (load.requests["prefill"].value, load.requests["decode"].value) == (0, 0)
            # D0 to D3, 100 ms apart: three gaps per stream (fewer if a busy proxy read two tokens at once); [DONE]
            # right after D3 is no token gap.
            counts, total = inter_token.series[()]
            assert 3 * 2 <= sum(counts) <= 3 * 3 and 0.05 <= total[0] / sum(counts) < 0.4

    run(scenario)
