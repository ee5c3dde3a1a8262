"""The NeuronConnector protocol as seen by fake workers: request ids, prefill body, chunk order and ids; standard
mode, the API key, metrics and settings (shared by all protocols)."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager
from typing import AsyncIterator

import aiohttp

from diproxy.config import parse_settings
from diproxy.testing.fake_worker import Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy
from tests.proxy.conftest import FAST_FLAGS, di_flags, post_stream, run, wait_ready

UID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


async def _pair(etcd: str, prefix: str, tokens: int = 5) -> tuple[FakeWorker, FakeWorker]:
    prefill = await FakeWorker("prefill", etcd=etcd, prefix=prefix, behaviour=Behaviour(tokens=tokens)).start()
    decode = await FakeWorker("decode", etcd=etcd, prefix=prefix, behaviour=Behaviour(tokens=tokens)).start()
    return prefill, decode


@asynccontextmanager
async def _proxied_pair(etcd: str, prefix: str, tokens: int = 5, *flags: str) -> AsyncIterator[tuple]:
    """A registered prefill/decode pair behind a ready proxy, with a client session; all stopped afterwards."""
    prefill, decode = await _pair(etcd, prefix, tokens)
    try:
        async with RunningProxy(di_flags("neuron-connector", etcd, prefix, *flags)) as proxy, \
                aiohttp.ClientSession() as session:
            await wait_ready(session, proxy.url)
            yield prefill, decode, proxy, session
    finally:
        await prefill.stop()
        await decode.stop()


def _check_request_ids(prefill: FakeWorker, decode: FakeWorker) -> str:
    p_id, d_id = prefill.requests[-1].request_id, decode.requests[-1].request_id
    p_match = re.fullmatch(rf"cmpl-({UID})_127\.0\.0\.1:{decode.port}", p_id or "")
    d_match = re.fullmatch(rf"cmpl-({UID})_127\.0\.0\.1:{prefill.port}", d_id or "")
    assert p_match and d_match, (p_id, d_id)
    assert p_match.group(1) == d_match.group(1)
    return p_match.group(1)


def test_streaming_completion_follows_the_protocol(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _proxied_pair(etcd.address, prefix) as (prefill, decode, proxy, session):
            body = {"model": "m", "prompt": "hello", "max_tokens": 5, "temperature": 0}
            result = await post_stream(session, proxy.url + "/v1/completions", body)

            assert result.status == 200
            uid = _check_request_ids(prefill, decode)
            assert prefill.requests[-1].body == {**body, "stream": True, "max_tokens": 1}
            assert decode.requests[-1].body == {**body, "stream": True}
            assert prefill.requests[-1].path == decode.requests[-1].path == "/v1/completions"
            # Prefill's token first, then decode's minus its first token; one [DONE] at the very end.
            assert result.texts == [" P0", " D1", " D2", " D3", " D4"]
            assert result.done and result.events.count("[DONE]") == 1
            ids = {e["id"] for e in result.events if isinstance(e, dict)}
            assert ids == {f"cmpl-{uid}"} == {result.headers["X-Request-ID"]}
            finishes = [e["choices"][0]["finish_reason"] for e in result.events if isinstance(e, dict)]
            assert finishes == [None, None, None, None, "length"]

    run(scenario)


def test_streaming_chat_caps_both_token_limits_for_prefill(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _proxied_pair(etcd.address, prefix, tokens=4) as (prefill, decode, proxy, session):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 4}
            result = await post_stream(session, proxy.url + "/v1/chat/completions", body)

            assert result.status == 200
            uid = _check_request_ids(prefill, decode)
            sent_to_prefill = prefill.requests[-1].body
            assert sent_to_prefill["max_tokens"] == 1 and sent_to_prefill["max_completion_tokens"] == 1
            assert decode.requests[-1].body == {**body, "stream": True}
            assert result.texts == [" P0", " D1", " D2", " D3"]
            assert {e["id"] for e in result.events if isinstance(e, dict)} == {f"chatcmpl-{uid}"}
            assert result.done

    run(scenario)


def test_first_decode_chunk_is_skipped_per_choice_index(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _proxied_pair(etcd.address, prefix, 3, "--max-n", "2") as (prefill, decode, proxy, session):
            result = await post_stream(session, proxy.url + "/v1/completions",
                                       {"prompt": "x", "max_tokens": 3, "n": 2})
            assert result.status == 200, "--max-n 2 lets n = 2 through (the default in di mode is 1)"
            by_index: dict[int, list[str]] = {0: [], 1: []}
            for event in result.events:
                if isinstance(event, dict):
                    choice = event["choices"][0]
                    by_index[choice["index"]].append(choice["text"])
            assert by_index == {0: [" P0", " D1", " D2"], 1: [" P0", " D1", " D2"]}

    run(scenario)


def test_non_streaming_returns_decode_answer_on_both_endpoints(etcd, prefix) -> None:
    async def scenario() -> None:
        async with _proxied_pair(etcd.address, prefix, tokens=3) as (prefill, decode, proxy, session):
            async with session.post(proxy.url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}) as r:
                assert r.status == 200
                answer = await r.json()
            uid = _check_request_ids(prefill, decode)
            assert answer["id"] == f"cmpl-{uid}"
            assert answer["choices"][0]["text"] == " D0 D1 D2"
            assert prefill.requests[-1].body == {"prompt": "x", "max_tokens": 1}

            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            async with session.post(proxy.url + "/v1/chat/completions", json=chat) as r:
                assert r.status == 200
                answer = await r.json()
            uid = _check_request_ids(prefill, decode)
            assert answer["id"] == f"chatcmpl-{uid}"
            assert answer["choices"][0]["message"]["content"] == " D0 D1"
            assert decode.requests[-1].path == "/v1/chat/completions"

    run(scenario)


def test_least_in_flight_and_round_robin_spread_over_prefill_workers(etcd, prefix) -> None:
    async def scenario() -> None:
        prefills = [await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, label=f"P{i}",
                                     behaviour=Behaviour(tokens=3)).start() for i in range(2)]
        decode = await FakeWorker("decode", etcd=etcd.address, prefix=prefix,
                                  behaviour=Behaviour(tokens=3, token_interval=0.005)).start()
        try:
            for policy in ("round-robin", "least-in-flight"):
                async with RunningProxy(di_flags("neuron-connector", etcd.address, prefix, "--selection",
                                                 policy)) as proxy, aiohttp.ClientSession() as session:
                    await wait_ready(session, proxy.url)
                    await wait_until_both_usable(proxy)
                    before = [len(p.requests) for p in prefills]
                    results = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                               for _ in range(6)]
                    assert all(r.status == 200 and r.done for r in results)
                    counts = [len(p.requests) - b for p, b in zip(prefills, before)]
                    if policy == "round-robin":
                        assert counts == [3, 3]
                    else:
                        assert sum(counts) == 6
        finally:
            for worker in (*prefills, decode):
                await worker.stop()

    run(scenario)


async def wait_until_both_usable(proxy: RunningProxy) -> None:
    from tests.proxy.conftest import wait_until

    registry = proxy.state.registry
    assert registry is not None
    await wait_until(lambda: len(registry.usable("prefill")) == 2, what="two usable prefill workers")


def test_standard_mode_balances_static_endpoints(prefix) -> None:
    async def scenario() -> None:
        workers = [await FakeWorker("standalone", label=f"S{i}", behaviour=Behaviour(tokens=3)).start()
                   for i in range(2)]
        try:
            flags = ["--mode", "standard", "--selection", "round-robin", *FAST_FLAGS]
            for worker in workers:
                flags += ["--endpoint", worker.address]
            async with RunningProxy(flags) as proxy, aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                await _wait_usable(proxy, "standalone", 2)
                streamed = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                            for _ in range(4)]
                assert all(r.status == 200 and r.done for r in streamed)
                assert sorted(r.texts[0] for r in streamed) == [" S00", " S00", " S10", " S10"]
                async with session.post(proxy.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}) as r:
                    assert r.status == 200
                    assert (await r.json())["choices"][0]["message"]["content"].startswith(" S")
                for worker in workers:
                    assert worker.requests and all(
                        re.fullmatch(rf"cmpl-{UID}", q.request_id or "") for q in worker.requests)
                    assert all("max_tokens" not in q.body for q in worker.requests)
        finally:
            for worker in workers:
                await worker.stop()

    run(scenario)


def test_standard_mode_balances_endpoints_registered_in_etcd(etcd, prefix) -> None:
    """As deployed in standard mode: di-register keeps /workers/standard/{ip}/{port} while an endpoint is healthy."""
    async def scenario() -> None:
        workers = [await FakeWorker("standard", label=f"S{i}", etcd=etcd.address, prefix=prefix,
                                    behaviour=Behaviour(tokens=3)).start() for i in range(2)]
        try:
            flags = ["--mode", "standard", "--etcd", etcd.address, "--etcd-prefix", prefix, "--selection",
                     "round-robin", *FAST_FLAGS]
            async with RunningProxy(flags) as proxy, aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                await _wait_usable(proxy, "standalone", 2)
                both = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"}) for _ in range(2)]
                assert sorted(r.texts[0] for r in both) == [" S00", " S10"]
                await workers[0].stop()  # its key leaves etcd with its lease
                await _wait_usable(proxy, "standalone", 1)
                after = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"}) for _ in range(2)]
                assert all(r.status == 200 and r.done and r.texts[0] == " S10" for r in after)
        finally:
            for worker in workers:
                await worker.stop()

    run(scenario)


async def _wait_usable(proxy: RunningProxy, role: str, count: int) -> None:
    from tests.proxy.conftest import wait_until

    registry = proxy.state.registry
    assert registry is not None
    await wait_until(lambda: len(registry.usable(role)) == count, what=f"{count} usable {role} workers")


def test_api_key_guards_completions_but_not_probes(tmp_path) -> None:
    async def scenario() -> None:
        worker = await FakeWorker("standalone", behaviour=Behaviour(tokens=2)).start()
        key_file = tmp_path / "key"
        key_file.write_text("s3cret\n")
        try:
            async with RunningProxy(["--mode", "standard", "--endpoint", worker.address,
                                     "--api-key-file", str(key_file), *FAST_FLAGS], api_key="s3cret") as proxy, \
                    aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                async with session.post(proxy.url + "/v1/completions", json={"prompt": "x"}) as r:
                    assert r.status == 401
                    assert (await r.json())["error"]["type"] == "authentication_error"
                async with session.post(proxy.url + "/v1/completions", json={"prompt": "x"},
                                        headers={"Authorization": "Bearer wrong"}) as r:
                    assert r.status == 401
                async with session.post(proxy.url + "/v1/completions", json={"prompt": "x"},
                                        headers={"Authorization": "Bearer s3cret"}) as r:
                    assert r.status == 200
                async with session.get(proxy.url + "/health") as r:
                    assert r.status == 200
                assert len(worker.requests) == 1
        finally:
            await worker.stop()

    run(scenario)


def test_metrics_count_requests_latency_and_pools(prefix, etcd) -> None:
    async def scenario() -> None:
        async with _proxied_pair(etcd.address, prefix, tokens=3) as (prefill, decode, proxy, session):
            for _ in range(3):
                await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
            async with session.post(proxy.url + "/v1/completions", data=b"not json") as r:
                assert r.status == 400
                assert (await r.json())["error"]["code"] == "invalid_json"
            async with session.get(proxy.url + "/metrics") as r:
                text = await r.text()
            lines = set(text.splitlines())
            assert 'diproxy_requests_total{endpoint="/v1/completions",status="200"} 3' in lines
            assert 'diproxy_requests_total{endpoint="/v1/completions",status="400"} 1' in lines
            assert 'diproxy_errors_total{kind="bad_request"} 1' in lines
            assert 'diproxy_time_to_first_token_seconds_count{endpoint="/v1/completions"} 3' in lines
            assert 'diproxy_request_duration_seconds_count{endpoint="/v1/completions"} 4' in lines
            assert 'diproxy_pool_workers{role="prefill",state="healthy"} 1' in lines
            assert f'diproxy_worker_in_flight{{role="decode",worker="{decode.address}"}} 0' in lines
            # Every request went through both phases and none is left in either.
            seconds = {line.split('"')[1]: float(line.split()[-1]) for line in lines
                       if line.startswith("diproxy_load_request_seconds_total{")}
            assert sorted(seconds) == ["decode", "prefill"] and min(seconds.values()) > 0
            assert {'diproxy_load_per_endpoint{role="prefill"} 0', 'diproxy_load_per_endpoint{role="decode"} 0'} <= lines

    run(scenario)


def test_settings_come_from_flags_then_environment_then_defaults() -> None:
    env = {"DIPROXY_ETCD": "10.0.0.5:8989", "DIPROXY_PORT": "9000", "DIPROXY_SELECTION": "round-robin",
           "DIPROXY_FIRST_TOKEN_TIMEOUT": "7.5"}
    settings = parse_settings(["--port", "9100"], env=env)
    assert (settings.etcd.host, settings.etcd.port) == ("10.0.0.5", 8989)  # type: ignore[union-attr]
    assert settings.port == 9100 and settings.selection == "round-robin"
    assert settings.first_token_timeout == 7.5 and settings.idle_timeout == 60.0
    standard = parse_settings(["--mode", "standard"], env={"DIPROXY_ENDPOINTS": "10.0.0.1:8000, 10.0.0.2:8000"})
    assert [str(e) for e in standard.endpoints] == ["10.0.0.1:8000", "10.0.0.2:8000"]
