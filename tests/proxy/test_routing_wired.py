"""Cache-aware routing through the running proxy, on loopback with real etcd and fake workers: each mode's choice,
the PD decider's threshold, two replicas choosing alike, and a stream carried across a decode killed mid-stream."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
import pytest

from diproxy import cli
from diproxy.cache_routing.blocks import estimated_tokens, prompt_bytes
from diproxy.testing.cache_model import ToyTokenizer
from diproxy.testing.fake_worker import Behaviour, FakeWorker, greedy_context, greedy_tokens
from diproxy.testing.harness import RunningProxy
from tests.proxy.conftest import FAST_FLAGS, di_stack, post_stream, run, wait_ready, wait_until

SYSTEM = "You are a careful assistant. Follow the house rules exactly. " * 40  # 2,480 bytes: 9 full blocks
CACHED = dict(prefix_cache_blocks=4000, block_tokens=16)


def completion(suffix: str, system: str = SYSTEM, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "prompt": system + suffix, "max_tokens": 4, **extra}


def served_by(workers: list[FakeWorker]) -> list[FakeWorker]:
    """The worker that received each request, in arrival order."""
    order = sorted(((r.at, w) for w in workers for r in w.requests), key=lambda pair: pair[0])
    return [w for _, w in order]


async def ask(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url + "/v1/completions", json=body) as reply:
        assert reply.status == 200, await reply.text()
        return await reply.json()


# -- the modes' choices ------------------------------------------------------------------------------
@pytest.mark.parametrize("routing", ["approximate", "blind"])
def test_a_conversation_stays_where_its_prefix_is_cached(etcd, prefix, routing):
    """Approximate: every turn goes to the decode and prefill that hold the conversation (hits counted); blind
    round robin spreads them."""
    flags = ["--routing", routing, "--selection", "round-robin"]

    async def scenario() -> None:
        behaviour = Behaviour(tokens=4, **CACHED)
        async with di_stack("nixl", etcd.address, prefix, [behaviour] * 2, [behaviour] * 2, *flags) as (
                p, d, proxy, session):
            for turn in range(4):
                await ask(session, proxy.url, completion(f" turn {turn}"))
            decodes, prefills = served_by(d), served_by(p)
            if routing == "approximate":
                assert len(set(decodes)) == 1 and len(set(prefills)) == 1
                routing_state = proxy.state.routing
                assert routing_state.hit_blocks.value("decode") >= 3 * 9  # turns 2-4 found the 9 system blocks
                # what the proxy believed is what the workers had: every later prompt found cached on the prefill
                assert all(log["cached"] >= len(SYSTEM) // 64 for log in prefills[0].cache_log[1:])
            else:
                assert len(set(decodes)) == 2 and len(set(prefills)) == 2

    run(scenario)


def test_precise_mode_follows_the_workers_own_events(etcd, prefix):
    """A worker's cache filled behind the proxy's back (a request sent to it directly) reaches the proxy only as KV
    events; the proxy then sends the prefix there, although its tie-break prefers the other worker."""

    async def scenario() -> None:
        behaviour = Behaviour(tokens=2, kv_events=True, **CACHED)
        prefills, decodes = [Behaviour(tokens=2, **CACHED)], [behaviour] * 2
        flags = ["--routing", "precise"]
        workers: list[FakeWorker] = []
        try:
            p = [await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, behaviour=b, label="P").start()
                 for b in prefills]
            d = [await FakeWorker("decode", etcd=etcd.address, prefix=prefix, behaviour=b, label=f"D{i}").start()
                 for i, b in enumerate(decodes)]
            workers = p + d
            async with RunningProxy(["--engine", "nixl", "--etcd", etcd.address, "--etcd-prefix", prefix,
                                     *FAST_FLAGS, *flags], tokenizer=ToyTokenizer()) as proxy, \
                    aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                routing = proxy.state.routing
                registry = proxy.state.registry
                await wait_until(lambda: len(routing.subscribed()) == 2, what="a subscriber per decode")
                assert sorted(routing.subscribed().values()) == sorted(w.kv_events_endpoint for w in d)
                body = completion(" the question")
                picker = routing.picker
                keys = picker.request_keys(body)
                assert not keys.keys  # no block size known before the first event
                preferred = picker.pick("decode", registry.usable("decode"), picker.request_keys(body)).worker
                other = next(w for w in d if w.address != preferred.address)
                # ZMQ drops what a SUB receives before its subscription reaches the PUB: repeat until one lands.
                async with aiohttp.ClientSession() as direct:
                    for _ in range(100):
                        async with direct.post(f"http://{other.address}/v1/completions",
                                               json={**body, "max_tokens": 1}) as reply:
                            assert reply.status == 200
                        if routing.event_batches.value("decode"):
                            break
                        other.cache.clear()
                        await asyncio.sleep(0.02)
                keys = picker.request_keys(body)
                await wait_until(lambda: picker.index("decode").matched_blocks(
                    keys.keys, [other.address])[other.address] > 0, what="the events applied")
                before = len(other.requests)
                await ask(session, proxy.url, body)
                assert len(other.requests) == before + 1  # routed to the worker whose events said it holds the prefix
                # a worker that leaves is forgotten, and its subscriber stopped
                await other.stop()
                await wait_until(lambda: len(routing.subscribed()) == 1, what="the leaver's subscriber stopped")
                assert picker.index("decode").matched_blocks(keys.keys, [other.address])[other.address] == 0
        finally:
            for worker in workers:
                await worker.stop()

    run(scenario)


def test_precise_mode_refuses_to_start_without_its_tokenizer(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # absent, whatever the environment has
    assert cli.main(["--routing", "precise", "--etcd", "127.0.0.1:2379"]) == 2
    assert "--tokenizer-file" in capsys.readouterr().err
    file = tmp_path / "tokenizer.json"
    file.write_text("{}")
    assert cli.main(["--routing", "precise", "--etcd", "127.0.0.1:2379", "--tokenizer-file", str(file)]) == 2
    err = capsys.readouterr().err
    assert "tokenizers==0.23.3" in err and "--routing approximate" in err


# -- the PD decider ----------------------------------------------------------------------------------
@pytest.mark.parametrize("margin, alone", [(1, True), (0, False)])
def test_decode_serves_alone_below_the_threshold(etcd, prefix, margin, alone):
    """The second turn lacks `uncached` tokens on its decode: with a threshold just above, decode serves it alone
    (no prefill request, no kv_transfer_params); at the threshold (strict), prefill goes first."""
    first, second = completion(" q1"), completion(" q1 then a longer follow-up question of the second turn")
    cached_tokens = (len(prompt_bytes(first)) // 256) * 64
    uncached = estimated_tokens(prompt_bytes(second)) - cached_tokens
    assert 0 < uncached < 0.7 * estimated_tokens(prompt_bytes(second))
    flags = ["--routing", "approximate", "--pd-max-uncached-tokens", str(uncached + margin)]

    async def scenario() -> None:
        behaviour = Behaviour(tokens=3, **CACHED)
        async with di_stack("nixl", etcd.address, prefix, [behaviour], [behaviour], *flags) as (p, d, proxy, session):
            await ask(session, proxy.url, first)  # cold: the whole prompt is uncached, prefill first
            assert len(p[0].requests) == 1 and d[0].requests[-1].body.get("kv_transfer_params")
            answer = await ask(session, proxy.url, second)
            assert answer["choices"][0]["text"]
            took_prefill = len(p[0].requests) == 2
            assert took_prefill is not alone
            assert ("kv_transfer_params" in d[0].requests[-1].body) is not alone
            assert proxy.state.routing.decode_alone.value() == (1 if alone else 0)
            async with session.get(proxy.url + "/metrics") as reply:
                text = await reply.text()
            assert f"diproxy_decode_alone_total {1 if alone else 0}" in text

    run(scenario)


# -- replicas ----------------------------------------------------------------------------------------
def test_two_replicas_fed_the_same_requests_choose_the_same_workers(etcd, prefix):
    systems = [f"System prompt number {i}. " * 30 for i in range(4)]
    requests = [completion(f" question {turn}", systems[(turn * 7) % 4]) for turn in range(12)]

    async def scenario() -> None:
        behaviour = Behaviour(tokens=2)
        async with di_stack("nixl", etcd.address, prefix, [behaviour] * 3, [behaviour] * 3,
                            "--routing", "approximate") as (p, d, first_proxy, session):
            async with RunningProxy(["--engine", "nixl", "--etcd", etcd.address, "--etcd-prefix", prefix,
                                     *FAST_FLAGS, "--routing", "approximate"]) as second_proxy:
                await wait_ready(session, second_proxy.url)
                await wait_until(lambda: len(second_proxy.state.registry.usable("decode")) == 3
                                 and len(second_proxy.state.registry.usable("prefill")) == 3, what="pools")
                choices = []
                for proxy in (first_proxy, second_proxy):
                    for worker in p + d:
                        worker.requests.clear()
                    for body in requests:
                        await ask(session, proxy.url, body)
                    choices.append(([w.address for w in served_by(d)], [w.address for w in served_by(p)]))
                assert choices[0] == choices[1]
                assert len(set(choices[0][0])) > 1  # different prefixes spread over the decodes

    run(scenario)


# -- migration ---------------------------------------------------------------------------------------
async def stream_and_kill(session: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any],
                          decodes: list[FakeWorker], kill_after: int) -> tuple[list[Any], list[str]]:
    """Stream body; after kill_after content chunks, kill the decode serving it. The events and ids received."""
    events: list[Any] = []
    killed = False
    async with session.post(url + path, json={**body, "stream": True}) as reply:
        assert reply.status == 200
        async for line in reply.content:
            text = line.decode().strip()
            if not text.startswith("data: "):
                continue
            data = text[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
            contents = [e for e in events if isinstance(e, dict) and _content(e)]
            if not killed and len(contents) >= kill_after:
                killed = True
                serving = next(w for w in decodes if w.in_flight)
                await serving.kill()
    return events, [e["id"] for e in events if isinstance(e, dict) and "id" in e]


def _content(event: dict[str, Any]) -> str | None:
    choice = (event.get("choices") or [{}])[0]
    return choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_stream_survives_its_decode_killed_mid_stream_token_exact(etcd, prefix, path):
    chat = path.endswith("chat/completions")
    body: dict[str, Any] = ({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "go"}],
                             "max_completion_tokens": 12} if chat else completion(" go", max_tokens=12))
    body["model"] = "fake-model"
    expected = greedy_tokens(greedy_context(body, chat), 12)

    async def scenario() -> None:
        behaviour = Behaviour(tokens=40, token_interval=0.03, greedy=True)
        async with di_stack("nixl", etcd.address, prefix, [behaviour] * 2, [behaviour] * 2,
                            "--routing", "approximate", "--migration-limit", "2") as (p, d, proxy, session):
            events, ids = await stream_and_kill(session, proxy.url, path, body, d, kill_after=4)
            assert events[-1] == "[DONE]" and not [e for e in events if isinstance(e, dict) and "error" in e]
            texts = [_content(e) for e in events if isinstance(e, dict) and _content(e)]
            assert texts == expected  # no token repeated, none missing, the same answer
            assert len(set(ids)) == 1
            if chat:
                roles = [e for e in events if isinstance(e, dict) and (e["choices"][0].get("delta") or {}).get("role")]
                assert len(roles) == 1
            assert proxy.state.routing.migrations.value("ok") == 1
            continuation = next(w for w in d if w.in_flight == 0 and w.requests and w.requests[-1].body.get(
                "max_completion_tokens" if chat else "max_tokens") == 8)
            assert continuation.requests[-1].body.get("continue_final_message") is (True if chat else None)

    run(scenario)


@pytest.mark.parametrize("flags, extra, outcome", [
    (["--migration-limit", "0"], {}, None),  # Dynamo's default: no migration
    (["--migration-limit", "1", "--max-n", "2"], {"n": 2}, "refused"),  # several choices are not migrated
])
def test_streams_that_may_not_migrate_fail_as_before(etcd, prefix, flags, extra, outcome):
    body = completion(" go", max_tokens=12, **extra)

    async def scenario() -> None:
        behaviour = Behaviour(tokens=40, token_interval=0.03, greedy=True)
        async with di_stack("nixl", etcd.address, prefix, [behaviour], [behaviour] * 2,
                            "--routing", "approximate", *flags) as (p, d, proxy, session):
            events, _ = await stream_and_kill(session, proxy.url, "/v1/completions", body, d, kill_after=2)
            assert events[-1] != "[DONE]" and [e for e in events if isinstance(e, dict) and "error" in e]
            assert proxy.state.routing.migrations.value("ok") == 0
            if outcome:
                assert proxy.state.routing.migrations.value(outcome) == 1

    run(scenario)
