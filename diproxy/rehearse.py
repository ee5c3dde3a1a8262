"""Rehearsal on loopback, once per engine protocol: etcd, a proxy with --engine ENGINE, two fake prefill workers and
one fake decode worker; one streaming completion goes through and its flow is printed (neuron-connector: the pair
and its request ids; lmcache: the decode picked first, prefill's request with the disagg_spec naming that decode's
receiver, the KV pushed there, what decode got, the streamed answer; nixl: prefill's request with kv_transfer_params
asked, what prefill returned, what decode got, the streamed answer). Then cache-aware routing on engine nixl: a
second turn finds its prefix cached on the decode that served the first and is served there alone (the PD decider),
and a stream whose decode is killed mid-stream is carried to a new pair and completes token-exact. Everything stops
at the end."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp

from diproxy.protocols import ENGINES
from diproxy.testing.etcd_server import EtcdMissing, EtcdServer, etcd_binary
from diproxy.testing.fake_worker import Behaviour, FakeWorker, greedy_context, greedy_tokens
from diproxy.testing.harness import RunningProxy

DEADLINE_SECONDS = 30.0
# The order the flows are shown in: the legacy protocol first, the default one last, nearest the prompt.
ORDER = ("neuron-connector", "lmcache", "nixl")
BODY = {"model": "fake-model", "prompt": "Hello", "max_tokens": 6, "stream": True}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _ask(session: aiohttp.ClientSession, url: str) -> tuple[int, list[str]]:
    """Wait for the proxy to be ready, send one streaming completion; the status and the answer's lines."""
    for _ in range(500):
        async with session.get(url + "/ready") as reply:
            if reply.status == 200:
                break
        await asyncio.sleep(0.01)
    async with session.post(url + "/v1/completions", json=BODY) as reply:
        lines = [f"client  <- HTTP {reply.status}, X-Request-Id {reply.headers.get('X-Request-Id')}"]
        lines += [f"client  <- {line.decode().rstrip()}" async for line in reply.content if line.strip()]
        return reply.status, lines


def _neuron_connector_flow(workers: list[FakeWorker]) -> list[str]:
    lines = []
    for worker in workers:
        for received in worker.requests:
            lines.append(f"{worker.role:<8}{worker.address} got X-Request-Id {received.request_id} "
                         f"max_tokens={received.body.get('max_tokens')} stream={received.body.get('stream')}")
    picked = [w for w in workers if w.requests]
    lines.append(f"pair    prefill {next(w.address for w in picked if w.role == 'prefill')} -> "
                 f"decode {next(w.address for w in picked if w.role == 'decode')}")
    return lines


def _nixl_flow(workers: list[FakeWorker]) -> list[str]:
    prefill = next(w for w in workers if w.role == "prefill" and w.requests)
    decode = next(w for w in workers if w.role == "decode")
    asked, got = prefill.requests[-1], decode.requests[-1]
    shown = {k: asked.body[k] for k in ("max_tokens", "stream") if k in asked.body}
    return [
        f"1 prefill {prefill.address} got X-Request-Id {asked.request_id} {_compact(shown)}",
        f"          kv_transfer_params {_compact(asked.body.get('kv_transfer_params'))}",
        f"2 prefill {prefill.address} returned kv_transfer_params {_compact(prefill.kv_returned[-1])}",
        f"3 decode  {decode.address} got X-Request-Id {got.request_id} "
        f"{_compact({k: got.body[k] for k in ('max_tokens', 'stream')})}",
        f"          kv_transfer_params {_compact(got.body.get('kv_transfer_params'))}",
        f"          (remote_host rewritten to the prefill worker's IP; decode read its blocks: "
        f"{prefill.kv_reads} read{'s' if prefill.kv_reads != 1 else ''})",
        "4 decode's stream, ids rewritten, to the client:",
    ]


def _lmcache_flow(workers: list[FakeWorker]) -> list[str]:
    prefill = next(w for w in workers if w.role == "prefill" and w.requests)
    decode = next(w for w in workers if w.role == "decode")
    asked, got = prefill.requests[-1], decode.requests[-1]
    shown = {k: asked.body[k] for k in ("max_tokens", "stream") if k in asked.body}
    spec = asked.body.get("kv_transfer_params", {}).get("disagg_spec", {})
    init, alloc = decode.lmcache_receiver
    reports = [at for req_id, at in prefill.lmcache_notified if req_id == asked.request_id]
    return [
        f"1 decode  {decode.address} picked first: its LMCache receiver is {decode.host} init {init} alloc {alloc}",
        f"2 prefill {prefill.address} got X-Request-Id {asked.request_id} {_compact(shown)}",
        f"          kv_transfer_params {_compact(asked.body.get('kv_transfer_params'))}",
        f"          (the sender pushes the prompt's KV to receiver {spec.get('receiver_host')}; "
        f"its one-token answer is not shown)",
        f"          transfer done: {len(reports)} LMCache ProxyNotif report(s) for {asked.request_id} on the proxy's "
        f"notification socket {prefill.lmcache_proxy}, "
        f"{'all before' if reports and max(reports) <= got.at else 'NOT all before'} decode was called",
        f"3 decode  {decode.address} got X-Request-Id {got.request_id} "
        f"{_compact({k: got.body[k] for k in ('max_tokens', 'stream')})}, no kv_transfer_params: "
        f"{'found' if decode.lmcache_hits else 'did NOT find'} the prompt's KV in its receive buffer",
        "4 decode's stream, ids rewritten, to the client:",
    ]


async def _rehearse(etcd: EtcdServer, engine: str) -> int:
    behaviour = Behaviour(tokens=6, token_interval=0.01)
    prefix = f"/rehearse-{engine}/workers/"
    workers = [FakeWorker("prefill", label="P1-", etcd=etcd.address, prefix=prefix, behaviour=behaviour),
               FakeWorker("prefill", label="P2-", etcd=etcd.address, prefix=prefix, behaviour=behaviour),
               FakeWorker("decode", label="D-", etcd=etcd.address, prefix=prefix, behaviour=behaviour)]
    proxy = RunningProxy(["--engine", engine, "--etcd", etcd.address, "--etcd-prefix", prefix,
                          "--health-interval", "0.1", "--pair-wait-timeout", "5"])
    print(f"== engine {engine}: {ENGINES[engine].summary}")
    try:
        for worker in workers:
            await worker.start()
            print(f"worker  {worker.role:<8} {worker.address}  etcd key {worker.etcd_key}")
        await proxy.start()
        for worker in workers:  # engine lmcache: where the senders report their transfers done
            worker.lmcache_proxy = proxy.lmcache_notify
        print(f"proxy   {proxy.url}  --engine {engine}  (etcd {etcd.address})")
        print(f"client  POST /v1/completions {_compact(BODY)}")
        async with aiohttp.ClientSession() as session:
            status, answer = await _ask(session, proxy.url)
        if status != 200:
            print("\n".join(answer))
            return 1
        if engine == "nixl":
            print("\n".join([*_nixl_flow(workers), *answer]))
        elif engine == "lmcache":
            print("\n".join([*_lmcache_flow(workers), *answer]))
            if not workers[-1].lmcache_hits:
                return 1
        else:
            print("\n".join([*answer, *_neuron_connector_flow(workers)]))
        return 0
    finally:
        await proxy.stop()
        for worker in workers:
            await worker.stop()


SYSTEM = "You are a careful assistant. Follow the house rules exactly. " * 40


def _text(event: dict[str, Any]) -> str:
    return (event.get("choices") or [{}])[0].get("text") or ""


async def _rehearse_routing(etcd: EtcdServer) -> int:
    """Cache-aware routing: a cache hit served on decode alone, then a migration."""
    prefix = "/rehearse-routing/workers/"
    behaviour = Behaviour(tokens=10, token_interval=0.05, greedy=True, prefix_cache_blocks=4000)
    workers = [FakeWorker(role, label=f"{role[0].upper()}{i}", etcd=etcd.address, prefix=prefix, behaviour=behaviour)
               for role in ("prefill", "decode") for i in (1, 2)]
    flags = ["--routing", "approximate", "--pd-max-uncached-tokens", "2048", "--migration-limit", "1"]
    proxy = RunningProxy(["--engine", "nixl", "--etcd", etcd.address, "--etcd-prefix", prefix,
                          "--health-interval", "0.1", "--pair-wait-timeout", "5", *flags])
    print(f"== cache-aware routing (engine nixl, {' '.join(flags)})")
    try:
        for worker in workers:
            await worker.start()
        await proxy.start()
        decodes = [w for w in workers if w.role == "decode"]
        routing = proxy.state.routing
        async with aiohttp.ClientSession() as session:
            for _ in range(500):
                async with session.get(proxy.url + "/ready") as reply:
                    if reply.status == 200 and all(len(proxy.state.registry.usable(r)) == 2
                                                   for r in ("prefill", "decode")):
                        break
                await asyncio.sleep(0.01)
            for turn, question in enumerate((" Question one?", " Question one? Answer. Question two?"), 1):
                body = {"model": "fake-model", "prompt": SYSTEM + question, "max_tokens": 4}
                async with session.post(proxy.url + "/v1/completions", json=body) as reply:
                    await reply.read()
                decode = max(decodes, key=lambda w: w.requests[-1].at if w.requests else 0)
                log = decode.cache_log[-1]
                kv = "with kv_transfer_params (prefill first)" if decode.requests[-1].body.get(
                    "kv_transfer_params") else "alone, no prefill hop (PD decider)"
                print(f"turn {turn}: HTTP {reply.status}, decode {decode.address} {kv}; it held {log['cached']} of "
                      f"{log['blocks']} prompt blocks")
            hits = routing.hit_blocks.value("decode")
            print(f"cache hit: the proxy found {hits:.0f} of {routing.blocks.value('decode'):.0f} prompt blocks cached "
                  f"on the decodes it chose; decode alone {routing.decode_alone.value():.0f}")
            body = {"model": "fake-model", "prompt": "Tell a story.", "max_tokens": 10, "stream": True}
            expected = greedy_tokens(greedy_context(body, False), 10)
            got: list[str] = []
            killed = ""
            async with session.post(proxy.url + "/v1/completions", json=body) as reply:
                async for line in reply.content:
                    text = line.decode().strip()
                    if not text.startswith("data: ") or text.endswith("[DONE]"):
                        continue
                    got.append(_text(json.loads(text[6:])))
                    if len(got) == 3 and not killed:
                        serving = next(w for w in decodes if w.in_flight)
                        killed = serving.address
                        await serving.kill()
            print(f"migration: decode {killed} killed after 3 tokens; the stream went on from a new pair "
                  f"({routing.migrations.value('ok'):.0f} migration)")
            print(f"client  <-{''.join(got)}")
            exact = got == expected
            print(f"token-exact: {'yes' if exact else 'NO'} ({len(got)} tokens, none repeated or missing)")
        return 0 if exact and hits > 0 else 1
    finally:
        await proxy.stop()
        for worker in workers:
            await worker.stop()


async def _rehearse_all(etcd: EtcdServer) -> int:
    failed = 0
    for number, engine in enumerate(ORDER):
        if number:
            print()
        failed |= await _rehearse(etcd, engine)
    print()
    failed |= await _rehearse_routing(etcd)
    return failed


def main() -> int:
    try:
        etcd_binary()
    except EtcdMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    with EtcdServer() as etcd:
        try:
            return asyncio.run(asyncio.wait_for(_rehearse_all(etcd), DEADLINE_SECONDS))
        except asyncio.TimeoutError:
            print(f"rehearsal did not finish within {DEADLINE_SECONDS}s", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
