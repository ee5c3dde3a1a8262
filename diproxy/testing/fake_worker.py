"""A fake OpenAI-compatible worker: registers in etcd like NeuronConnector (or DiStack's registrar), streams N tokens
at a set pace, records each request's X-Request-Id and body, and fails on demand (HTTP 500, hang, die mid-stream, an
SSE error event after 200, or refused connections for a moment). Its /metrics shows what the node's drain reads from
vLLM (vllm-project/vllm vllm/v1/metrics/loggers.py, PrometheusStatLogger): vllm:num_requests_running (the requests it
is answering), vllm:num_requests_waiting (0) and vllm:kv_cache_usage_perc (a prefill's blocks no decode has read yet,
plus two per running request, out of KV_CACHE_BLOCKS).

It speaks the NIXL protocol as vLLM's NixlConnector does (vllm-project/vllm:vllm/distributed/kv_transfer/
kv_connector/v1/nixl/scheduler.py request_finished and update_state_after_alloc): a prefill asked with
kv_transfer_params.do_remote_decode and max_tokens 1 that stops at max_tokens returns kv_transfer_params naming its
blocks, with remote_host its side-channel bind address "0.0.0.0"; a decode given kv_transfer_params checks them and
answers HTTP 400 if they are not a prefill's, with remote_host rewritten to that prefill's IP.

It speaks the LMCache protocol as LMCache's NIXL PD backend does (sender prefill, receiver decode; LMCache/LMCache
examples/disagg_prefill/xpyd/disagg_proxy_server_first_token_from_decoder_xpyd.py@c5f9daee): a decode is a receiver
on the ports diproxy.protocols.lmcache.receiver_ports gives for its HTTP port; a prefill given
kv_transfer_params.disagg_spec checks it (every key, a routable host, one init and one alloc port per rank, one token
asked, not streamed; HTTP 400 otherwise) and "pushes" the prompt's KV to the receiver it names, if that is a fake
decode of this process. The KV lands when the prefill reports the transfer done: one LMCache ProxyNotif{req_id} per
rank (msgspec msgpack over a ZMQ PUSH socket to lmcache_proxy, the proxy's notification socket, as LMCache's
lmcache/v1/storage_backend/pd_backend.py@07e07869 sends it), before or after answering, delayed or never (Behaviour
lmcache_notify*); lmcache_notified records when each report went out. A decode then finds the prompt's KV
(lmcache_hits) or prefills it itself (lmcache_misses); a decode given a disagg_spec answers HTTP 400 (it is the
prefiller's, never the decoder's).

With Behaviour.prefix_cache_blocks > 0 it keeps a prefix cache (diproxy/testing/cache_model.py: an LRU over blocks of
ToyTokenizer tokens): a prefill, a standalone worker or a decode asked without kv_transfer_params (the PD decider's
decode-alone case) waits prefill_per_block seconds per block of the prompt it lacks; a decode given a prefill's
kv_transfer_params waits pull_per_block per block it lacks, as vLLM's NixlConnector pulls only the blocks decode has
not cached (vllm/distributed/kv_transfer/kv_connector/v1/nixl/scheduler.py@053da34b get_num_new_matched_tokens:
prompt tokens - num_computed_tokens). Either way the prompt's blocks are cached afterwards, and with
Behaviour.kv_events the changes go out as vLLM's KV events on a ZMQ PUB socket (kv_events_endpoint), in vLLM's
msgspec layout. With the default 0 nothing of this happens and the timings are as before. The worker announces the
events' port in its registry value ({"connections": [], "kv_events_port": PORT}), as docs/routing.md asks a worker to.

With Behaviour.greedy the answer's tokens are a function of the context alone (the prompt, or the chat rendered as
greedy_context renders it, plus the tokens generated so far), like greedy decoding by one model on every worker: a
stream carried to another worker with the prompt and the tokens so far continues with exactly the tokens the first
would have produced (greedy_tokens gives the expected answer)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Coroutine

import aiohttp
import zmq
import zmq.asyncio
from aiohttp import web

from diproxy.cache_routing.kv_events import encode_batch
from diproxy.etcd_gateway import EtcdGateway
from diproxy.event_loop import new_event_loop
from diproxy.protocols.lmcache.notify import encode_notification
from diproxy.protocols.lmcache import DISAGG_SPEC, receiver_ports
from diproxy.testing.cache_model import PrefixCacheModel, ToyTokenizer

FAIL_MODES = ("none", "status500", "hang", "die", "error_event")
LMCACHE_NOTIFY = ("before", "after", "never")  # when a sender prefill reports its KV transfer done
# What vLLM's prefill returns in kv_transfer_params (NixlConnectorScheduler.request_finished), and the keys its decode
# needs (update_state_after_alloc: remote_block_ids truthy and the other four present).
PREFILL_RETURNS = ("do_remote_prefill", "do_remote_decode", "remote_block_ids", "remote_engine_id",
                   "remote_request_id", "remote_host", "remote_port", "tp_size")
DECODE_NEEDS = ("remote_block_ids", "remote_engine_id", "remote_request_id", "remote_host", "remote_port")
SIDE_CHANNEL_BIND = "0.0.0.0"
KV_CACHE_BLOCKS = 1000


@dataclass
class ReceivedRequest:
    path: str
    request_id: str | None
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass
class Behaviour:
    tokens: int = 8
    token_interval: float = 0.0
    first_token_delay: float = 0.0
    fail: str = "none"
    fail_after: int = 0  # tokens sent before a hang or die
    # Send a stream's status line and headers before first_token_delay instead of with the first token:
    # vLLM answers a streaming request with 200 at once and only then generates.
    headers_first: bool = False
    # fail="error_event": the status and message of the error event sent after fail_after tokens of a 200 stream
    # (a whole answer gets them as an HTTP error instead), as vLLM does for errors raised while generating.
    error_status: int = 500
    error_message: str = "injected error"
    # Stop on EOS after this many tokens (finish_reason "stop"); None: only max_tokens or `tokens` stop.
    eos_after: int | None = None
    # LMCache sender prefill: report the transfer done (and land the KV at the receiver) before answering, after
    # answering (+ lmcache_notify_delay seconds), or never; lmcache_notify_ranks reports (None: one per receiver rank).
    lmcache_notify: str = "after"
    lmcache_notify_delay: float = 0.0
    lmcache_notify_ranks: int | None = None
    # Prefix cache (0: none). Blocks of block_tokens ToyTokenizer tokens; the waits are per block lacking.
    prefix_cache_blocks: int = 0
    block_tokens: int = 16
    prefill_per_block: float = 0.0
    pull_per_block: float = 0.0
    kv_events: bool = False  # publish the cache's changes as vLLM KV events (needs prefix_cache_blocks > 0)
    kv_events_topic: str = "kv"
    greedy: bool = False  # tokens from the context (greedy_tokens) instead of LABEL + index


@dataclass
class KvBlocks:
    """Blocks a fake prefill holds for a remote decode, until one reads them."""

    request_id: str
    block_ids: list[int]
    reads: int = 0


class KvTransferError(Exception):
    """A decode was given kv_transfer_params that are not what a prefill returned, rewritten by the proxy."""


class FakeWorker:
    def __init__(self, role: str = "decode", host: str = "127.0.0.1", port: int = 0, label: str | None = None,
                 etcd: str | None = None, lease_ttl: int = 2, behaviour: Behaviour | None = None,
                 prefix: str = "/workers/") -> None:
        self.role = role
        self.host = host
        self.port = port
        self.label = label or role[0].upper()
        self.etcd = etcd
        self.lease_ttl = lease_ttl
        self.prefix = prefix
        self.behaviour = behaviour or Behaviour()
        self.healthy = True
        self.requests: list[ReceivedRequest] = []
        self.in_flight = 0  # completion requests being answered (vllm:num_requests_running)
        self.metrics_reads = 0  # /metrics scrapes (a drain's polls)
        self.side_channel_port = 0  # NIXL side channel a prefill reports (VLLM_NIXL_SIDE_CHANNEL_PORT); set on start
        self.kv_blocks: dict[str, KvBlocks] = {}  # prefill: by remote_request_id
        self.kv_received: list[dict[str, Any]] = []  # decode: the kv_transfer_params it accepted
        self.kv_returned: list[dict[str, Any]] = []  # prefill: the kv_transfer_params it answered with
        self._next_block = 0
        self.lmcache_sent: list[dict[str, Any]] = []  # prefill: the disagg_specs it accepted and pushed KV for
        self.lmcache_kv: dict[str, dict[str, Any]] = {}  # decode: KV pushed to its receiver, by prompt, not read yet
        self.lmcache_hits = 0  # decode: requests whose prompt's KV a prefill had pushed here
        self.lmcache_misses = 0  # decode: requests it prefilled itself
        self.lmcache_receiver: tuple[list[int], list[int]] = ([], [])  # decode: its receiver's init and alloc ports
        self.lmcache_proxy: str | None = None  # prefill: HOST:PORT of the proxy's LMCache notification socket
        self.lmcache_notified: list[tuple[str, float]] = []  # prefill: (req_id, time.monotonic()) of each report sent
        self._zmq: zmq.asyncio.Context | None = None
        self._push: zmq.asyncio.Socket | None = None
        self.cache: PrefixCacheModel | None = None  # set on start when behaviour.prefix_cache_blocks > 0
        self.cache_log: list[dict[str, int]] = []  # per request: prompt blocks, cached, transferred or prefilled
        # Totals of the same, by whether the prompt was computed here or pulled from a prefill (bench/, via /metrics).
        self.cache_totals: dict[str, list[int]] = {"computed": [0, 0], "pulled": [0, 0]}  # [blocks, cached]
        self.completions = 0
        self.kv_events_endpoint: str | None = None  # tcp://host:port of the KV events PUB socket
        self.kv_events_port: int | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._pub_seq = 0
        self._notifying: set[asyncio.Task] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lease: str | None = None
        self._keepalive: asyncio.Task | None = None
        self._open: set[web.StreamResponse] = set()
        self._hung: set[asyncio.Future] = set()
        self._transports: set[asyncio.BaseTransport] = set()
        self._reopen: asyncio.Task | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def etcd_key(self) -> str:
        return f"{self.prefix}{self.role}/{self.host}/{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, register: bool = True) -> "FakeWorker":
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        self.port = self._runner.addresses[0][1]
        self.side_channel_port = self.port + 1000
        self.engine_id = f"fake-engine-{self.host}-{self.port}"
        _ENGINES[self.engine_id] = self
        if self.behaviour.prefix_cache_blocks > 0:
            self.cache = PrefixCacheModel(self.behaviour.prefix_cache_blocks, self.behaviour.block_tokens)
            if self.behaviour.kv_events:
                self._zmq = self._zmq or zmq.asyncio.Context()
                self._pub = self._zmq.socket(zmq.PUB)
                self._pub.setsockopt(zmq.LINGER, 0)
                self.kv_events_port = port = self._pub.bind_to_random_port(f"tcp://{self.host}")
                self.kv_events_endpoint = f"tcp://{self.host}:{port}"
        if self.role == "decode":
            self.lmcache_receiver = receiver_ports(self.port, 1)
            _RECEIVERS[(self.host, self.lmcache_receiver[0][0], self.lmcache_receiver[1][0])] = self
        if self.etcd and register:
            await self.register()
        return self

    async def refuse_connections(self, seconds: float) -> None:
        """Close every connection and stop listening for `seconds` (connects are refused), then listen again."""
        assert self._runner is not None and self._site is not None
        await self._site.stop()
        server = self._runner.server
        for handler in list(getattr(server, "connections", []) if server is not None else []):
            handler.force_close()
            if handler.transport is not None:
                handler.transport.close()
        await asyncio.sleep(0)

        async def reopen() -> None:
            await asyncio.sleep(seconds)
            if self._runner is not None:
                self._site = web.TCPSite(self._runner, self.host, self.port)
                await self._site.start()

        self._reopen = asyncio.create_task(reopen())

    async def register(self) -> None:
        """What NeuronConnector does: a lease, the key under it, and keep-alives."""
        assert self.etcd is not None
        host, port = self.etcd.rsplit(":", 1)
        self._session = self._session or aiohttp.ClientSession()
        gateway = EtcdGateway(self._session, host, int(port))
        self._lease = await gateway.grant_lease(self.lease_ttl)
        await gateway.put(self.etcd_key, self.registry_value, self._lease)
        self._keepalive = asyncio.create_task(self._keep_alive(gateway, self._lease))

    @property
    def registry_value(self) -> str:
        """NeuronConnector's value, plus the KV-events port where the worker publishes events (docs/routing.md)."""
        value: dict[str, Any] = {"connections": []}
        if self.kv_events_port is not None:
            value["kv_events_port"] = self.kv_events_port
        return json.dumps(value)

    async def _keep_alive(self, gateway: EtcdGateway, lease: str) -> None:
        while True:
            await asyncio.sleep(max(self.lease_ttl / 3, 0.2))
            try:
                if await gateway.keep_alive(lease) <= 0:
                    # The lease died (etcd lost it or it expired): register again, as a restarted worker would.
                    self._lease = lease = await gateway.grant_lease(self.lease_ttl)
                    await gateway.put(self.etcd_key, self.registry_value, lease)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                continue

    async def deregister(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            await asyncio.gather(self._keepalive, return_exceptions=True)
            self._keepalive = None
        if self._lease is not None and self._session is not None and self.etcd:
            host, port = self.etcd.rsplit(":", 1)
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                await EtcdGateway(self._session, host, int(port)).revoke_lease(self._lease)
            self._lease = None

    async def kill(self) -> None:
        """Die like a crashed process: connections reset, port closed, etcd key left to expire with the lease."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            await asyncio.gather(self._keepalive, return_exceptions=True)
            self._keepalive = None
        for transport in list(self._transports):
            transport.abort()
        await self._close_server()

    @property
    def kv_blocks_held(self) -> int:
        """Blocks a prefill keeps for a decode that has not read them yet."""
        return sum(len(blocks.block_ids) for blocks in self.kv_blocks.values() if not blocks.reads)

    @property
    def kv_reads(self) -> int:
        return sum(blocks.reads for blocks in self.kv_blocks.values())

    async def stop(self) -> None:
        await self.deregister()
        for waiter in list(self._hung):
            waiter.cancel()
        await self._close_server()

    async def _close_server(self) -> None:
        for task in list(self._notifying):
            task.cancel()
        await asyncio.gather(*self._notifying, return_exceptions=True)
        if self._push is not None:
            self._push.close(linger=0)
            self._push = None
        if self._pub is not None:
            self._pub.close(linger=0)
            self._pub = None
        if self._zmq is not None:
            self._zmq.term()
            self._zmq = None
        _ENGINES.pop(getattr(self, "engine_id", ""), None)
        for key in [key for key, worker in _RECEIVERS.items() if worker is self]:
            del _RECEIVERS[key]
        if self._reopen is not None:
            self._reopen.cancel()
            await asyncio.gather(self._reopen, return_exceptions=True)
            self._reopen = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- handlers ---------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({}, status=200 if self.healthy else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics_reads += 1
        labels = '{engine="0",model_name="fake-model"}'
        usage = (self.kv_blocks_held + 2 * self.in_flight) / KV_CACHE_BLOCKS
        text = "".join(f"# TYPE {name} gauge\n{name}{labels} {value}\n" for name, value in (
            ("vllm:num_requests_running", float(self.in_flight)), ("vllm:num_requests_waiting", 0.0),
            ("vllm:kv_cache_usage_perc", usage)))
        # The fake's own figures (bench/routing_loopback.py): requests answered and its prefix cache's blocks.
        text += f"fake_requests_total {self.completions}\n"
        for kind, (blocks, cached) in self.cache_totals.items():
            text += f'fake_prefix_blocks_total{{kind="{kind}"}} {blocks}\nfake_prefix_cached_blocks_total{{kind="{kind}"}} {cached}\n'
        return web.Response(text=text, content_type="text/plain")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _hang(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._hung.add(waiter)
        try:
            await waiter
        finally:
            self._hung.discard(waiter)

    def _die(self, request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            self._transports.add(transport)
        self.in_flight += 1
        self.completions += 1
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1
            self._transports.discard(transport)  # type: ignore[arg-type]

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        request_id = request.headers.get("X-Request-Id")
        self.requests.append(ReceivedRequest(request.path, request_id, body))
        b = self.behaviour
        if b.fail == "status500":
            return web.json_response({"object": "error", "message": "injected failure", "code": 500}, status=500)
        if b.fail == "hang" and b.fail_after == 0:
            await self._hang()
        chat = request.path.endswith("/chat/completions")
        upstream_id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id or 'none'}"
        kv_asked = body.get("kv_transfer_params")
        first_token_delay = b.first_token_delay
        if isinstance(kv_asked, dict) and kv_asked.get("do_remote_prefill"):
            try:
                self._read_remote_kv(kv_asked)
            except KvTransferError as exc:
                return web.json_response(_vllm_error(f"fake decode {self.address}: {exc}", 400), status=400)
            first_token_delay = 0.0  # the prompt's KV came from prefill: nothing to prefill here
        elif isinstance(kv_asked, dict) and DISAGG_SPEC in kv_asked:
            try:
                landing = self._push_lmcache_kv(kv_asked[DISAGG_SPEC], body, request.path)
            except KvTransferError as exc:
                return web.json_response(_vllm_error(f"fake {self.role} {self.address}: {exc}", 400), status=400)
            if b.lmcache_notify == "before":
                await landing
            elif b.lmcache_notify == "after":
                task = asyncio.get_running_loop().create_task(self._after(b.lmcache_notify_delay, landing))
                self._notifying.add(task)
                task.add_done_callback(self._notifying.discard)
            else:
                landing.close()
        elif self.role == "decode" and self._take_lmcache_kv(body, request.path):
            first_token_delay = 0.0  # LMCache found the prompt's KV in its receive buffer
        if self.cache is not None:
            pulled = isinstance(kv_asked, dict) and bool(kv_asked.get("do_remote_prefill"))
            first_token_delay += await self._use_cache(body, pulled)
        limit = body.get("max_completion_tokens") if chat and body.get("max_completion_tokens") else body.get("max_tokens")
        count = min(b.tokens, int(limit)) if limit else b.tokens
        finish = "length"
        if b.eos_after is not None and b.eos_after < count:
            count, finish = b.eos_after, "stop"
        choices = int(body.get("n", 1) or 1)
        streaming = bool(body.get("stream"))
        texts = (greedy_tokens(greedy_context(body, chat), count) if b.greedy
                 else [self._token(i) for i in range(count)])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if streaming and b.headers_first:
            await response.prepare(request)
        if first_token_delay:
            await asyncio.sleep(first_token_delay)
        if not streaming:
            if b.fail == "die":
                self._die(request)
                return web.Response()
            if b.fail == "error_event":
                return web.json_response(_vllm_error(b.error_message, b.error_status), status=b.error_status)
            answer = self._whole(upstream_id, chat, texts, choices, finish)
            if isinstance(kv_asked, dict) and kv_asked.get("do_remote_decode") and limit == 1 and finish == "length":
                answer["kv_transfer_params"] = self._hold_kv(f"{upstream_id}-0")
            return web.json_response(answer)
        if not response.prepared:
            await response.prepare(request)
        for i in range(count + 1):
            if i and i < count and b.token_interval:
                await asyncio.sleep(b.token_interval)
            if b.fail in ("hang", "die", "error_event") and i == b.fail_after:
                if b.fail == "die":
                    # Let the tokens already written reach the reader before the connection resets.
                    await asyncio.sleep(0.05)
                    self._die(request)
                    return response
                if b.fail == "error_event":
                    # vllm/entrypoints/openai/serving_completion.py: the error event, then [DONE].
                    error = json.dumps(_vllm_error(b.error_message, b.error_status))
                    await response.write(f"data: {error}\n\n".encode() + b"data: [DONE]\n\n")
                    await response.write_eof()
                    return response
                await self._hang()
            if i == count:
                break
            for index in range(choices):
                await response.write(self._chunk(upstream_id, chat, i, index, finish if i == count - 1 else None,
                                                 texts[i]))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _use_cache(self, body: dict[str, Any], pulled: bool) -> float:
        """The prompt through the prefix cache: the seconds its missing blocks cost (pulled from a prefill, or
        prefilled here), and the blocks cached afterwards, published as KV events if asked."""
        assert self.cache is not None
        tokens = ToyTokenizer().tokens(body) or []
        total = len(tokens) // self.cache.block_size
        cached = self.cache.cached_blocks(tokens)
        missing = total - cached
        b = self.behaviour
        self.cache_log.append({"blocks": total, "cached": cached, "transferred" if pulled else "prefilled": missing})
        if len(self.cache_log) > 10_000:  # long benchmark runs: the totals below keep the sums
            del self.cache_log[:5_000]
        totals = self.cache_totals["pulled" if pulled else "computed"]
        totals[0] += total
        totals[1] += cached
        events = self.cache.store(tokens)
        if events and self._pub is not None:
            payload = encode_batch(events, time.time())
            await self._pub.send_multipart((b.kv_events_topic.encode(), self._pub_seq.to_bytes(8, "big"), payload))
            self._pub_seq += 1
        return missing * (b.pull_per_block if pulled else b.prefill_per_block)

    def _hold_kv(self, remote_request_id: str) -> dict[str, Any]:
        """What vLLM's NixlConnectorScheduler.request_finished returns for a length-capped remote-decode prefill."""
        blocks = [self._next_block, self._next_block + 1]
        self._next_block += 2
        self.kv_blocks[remote_request_id] = KvBlocks(remote_request_id, blocks)
        params = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": blocks,
                  "remote_engine_id": self.engine_id, "remote_request_id": remote_request_id,
                  "remote_host": SIDE_CHANNEL_BIND, "remote_port": self.side_channel_port, "tp_size": 1}
        self.kv_returned.append(params)
        return dict(params)

    def _read_remote_kv(self, params: dict[str, Any]) -> None:
        """A decode's check of its kv_transfer_params, stricter than vLLM's (which would prefill locally): every key
        a decode reads, pointing at a live fake prefill's side channel by its IP, and blocks that prefill holds."""
        missing = [key for key in DECODE_NEEDS if params.get(key) in (None, "", [])]
        if missing:
            raise KvTransferError(f"kv_transfer_params lack {', '.join(missing)}: {params}")
        prefill = _ENGINES.get(str(params["remote_engine_id"]))
        if prefill is None:
            # Another process's prefill (the benchmark's): at least the address must be routable.
            if params["remote_host"] in (SIDE_CHANNEL_BIND, "localhost"):
                raise KvTransferError(f"remote_host {params['remote_host']!r} is a bind address, not the prefill's IP")
        else:
            if params["remote_host"] != prefill.host:
                raise KvTransferError(f"remote_host {params['remote_host']!r} is not prefill {prefill.address}'s IP")
            if params["remote_port"] != prefill.side_channel_port:
                raise KvTransferError(f"remote_port {params['remote_port']} is not prefill's side channel")
            blocks = prefill.kv_blocks.get(str(params["remote_request_id"]))
            if blocks is None or blocks.block_ids != params["remote_block_ids"]:
                raise KvTransferError(f"prefill {prefill.address} holds no blocks {params['remote_block_ids']} "
                                      f"for {params['remote_request_id']}")
            blocks.reads += 1
        self.kv_received.append(params)

    def _push_lmcache_kv(self, spec: Any, body: dict[str, Any], path: str) -> Coroutine[Any, Any, None]:
        """A sender's check of the disagg_spec the proxy added; then (the coroutine returned) the KV "pushed" to the
        receiver it names and the transfer reported done to the proxy, once per rank."""
        if self.role != "prefill":
            raise KvTransferError(f"a disagg_spec reached a {self.role} worker: {spec}")
        if not isinstance(spec, dict) or sorted(spec) != ["receiver_alloc_port", "receiver_host", "receiver_init_port",
                                                          "req_id"]:
            raise KvTransferError(f"disagg_spec is not {{req_id, receiver_host, receiver_init_port, "
                                  f"receiver_alloc_port}}: {spec}")
        init, alloc = spec["receiver_init_port"], spec["receiver_alloc_port"]
        if not (isinstance(init, list) and isinstance(alloc, list) and init and len(init) == len(alloc)
                and all(isinstance(p, int) for p in init + alloc)):
            raise KvTransferError(f"receiver ports are not one init and one alloc port per rank: {spec}")
        if not spec["req_id"] or spec["receiver_host"] in (SIDE_CHANNEL_BIND, "localhost", "", None):
            raise KvTransferError(f"disagg_spec needs a req_id and the receiver's IP: {spec}")
        if body.get("max_tokens") != 1 or body.get("stream"):
            raise KvTransferError("a sender prefill is asked for one token, not streamed")
        self.lmcache_sent.append(spec)
        return self._land_and_notify(spec, _prompt_key(body, path), len(init))

    async def _land_and_notify(self, spec: dict[str, Any], prompt: str, ranks: int) -> None:
        receiver = _RECEIVERS.get((spec["receiver_host"], spec["receiver_init_port"][0],
                                   spec["receiver_alloc_port"][0]))
        if receiver is not None:
            receiver.lmcache_kv[prompt] = {"req_id": spec["req_id"], "sender": self.address}
        if self.lmcache_proxy is None:
            return
        if self._push is None:
            # pd_backend.py _init_sender: zmq.PUSH, connect to tcp://{pd_proxy_host}:{pd_proxy_port}
            self._zmq = zmq.asyncio.Context()
            self._push = self._zmq.socket(zmq.PUSH)
            self._push.connect(f"tcp://{self.lmcache_proxy}")
        count = self.behaviour.lmcache_notify_ranks
        for _ in range(ranks if count is None else count):
            await self._push.send(encode_notification(spec["req_id"]))
            self.lmcache_notified.append((spec["req_id"], time.monotonic()))

    @staticmethod
    async def _after(delay: float, landing: Coroutine[Any, Any, None]) -> None:
        await asyncio.sleep(delay)
        await landing

    def _take_lmcache_kv(self, body: dict[str, Any], path: str) -> bool:
        if self.lmcache_kv.pop(_prompt_key(body, path), None) is not None:
            self.lmcache_hits += 1
            return True
        self.lmcache_misses += 1
        return False

    def _token(self, i: int) -> str:
        return f" {self.label}{i}"

    def _chunk(self, upstream_id: str, chat: bool, i: int, index: int, finish: str | None, text: str) -> bytes:
        if chat:
            delta: dict[str, Any] = {"content": text}
            if i == 0:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        payload = {"id": upstream_id, "object": obj, "created": int(time.time()), "model": "fake-model",
                   "choices": [choice]}
        return f"data: {json.dumps(payload)}\n\n".encode()

    def _whole(self, upstream_id: str, chat: bool, texts: list[str], choices: int,
               finish: str = "length") -> dict[str, Any]:
        count = len(texts)
        text = "".join(texts)
        items = [({"index": n, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                  if chat else {"index": n, "text": text, "logprobs": None, "finish_reason": finish})
                 for n in range(choices)]
        return {"id": upstream_id, "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": "fake-model", "choices": items,
                "usage": {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1}}


# Fake engines of this process by remote_engine_id, so a fake decode can check what a fake prefill handed out.
_ENGINES: dict[str, FakeWorker] = {}
# Fake decodes of this process by LMCache receiver (host, init port of rank 0, alloc port of rank 0).
_RECEIVERS: dict[tuple[str, int, int], FakeWorker] = {}


def greedy_context(body: dict[str, Any], chat: bool) -> bytes:
    """The context a greedy fake model continues: the prompt, or the chat rendered "role: content" a line each, then
    "assistant: " (vLLM's add_generation_prompt); with continue_final_message the last message is left open instead,
    so messages + [assistant: text so far] renders exactly as the original chat plus that text."""
    if not chat:
        prompt = body.get("prompt")
        return (prompt if isinstance(prompt, str) else json.dumps(prompt)).encode()
    parts = [f"{m.get('role')}: {m.get('content')}" for m in body.get("messages") or [] if isinstance(m, dict)]
    if body.get("continue_final_message"):
        return "\n".join(parts).encode()
    opening = "assistant: " if body.get("add_generation_prompt", True) else ""
    return ("".join(part + "\n" for part in parts) + opening).encode()


def greedy_tokens(context: bytes, count: int) -> list[str]:
    """The next count tokens after context, each a function of the context and the tokens before it."""
    state = hashlib.blake2b(context, digest_size=8)
    out = []
    for _ in range(count):
        token = " w" + state.copy().hexdigest()[:6]
        out.append(token)
        state.update(token.encode())
    return out


def _prompt_key(body: dict[str, Any], path: str) -> str:
    """What LMCache's KV is found by (it hashes the prompt's tokens): the path and the prompt or messages."""
    return path + json.dumps(body.get("messages", body.get("prompt")), sort_keys=True)


def _vllm_error(message: str, status: int) -> dict[str, Any]:
    """vLLM's error body (ErrorResponse(error=ErrorInfo(...)) in vllm/entrypoints/openai/serving_engine.py)."""
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(status, "InternalServerError")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


async def _serve(args: argparse.Namespace) -> None:
    worker = FakeWorker(args.role, args.host, args.port, args.label, args.etcd, args.lease_ttl,
                        Behaviour(args.tokens, args.token_interval, args.first_token_delay, args.fail, args.fail_after,
                                  args.headers_first, lmcache_notify=args.lmcache_notify,
                                  lmcache_notify_delay=args.lmcache_notify_delay,
                                  prefix_cache_blocks=args.prefix_cache_blocks, block_tokens=args.block_tokens,
                                  prefill_per_block=args.prefill_per_block, pull_per_block=args.pull_per_block,
                                  kv_events=args.kv_events, greedy=args.greedy))
    worker.lmcache_proxy = args.lmcache_proxy
    await worker.start()
    print(f"READY {worker.address}" + (f" KV_EVENTS {worker.kv_events_endpoint}" if worker.kv_events_endpoint
                                        else ""), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await worker.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diproxy.testing.fake_worker", description=__doc__)
    parser.add_argument("--role", default="decode", choices=("prefill", "decode", "standalone"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--label", default=None, help="token text prefix (default: P, D or S)")
    parser.add_argument("--etcd", default=None, help="etcd HOST:PORT to register in (none: do not register)")
    parser.add_argument("--lease-ttl", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--token-interval", type=float, default=0.01)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--fail", choices=FAIL_MODES, default="none")
    parser.add_argument("--fail-after", type=int, default=0)
    parser.add_argument("--headers-first", action="store_true",
                        help="send a stream's status line at once, before --first-token-delay (as vLLM does)")
    parser.add_argument("--lmcache-proxy", default=None, metavar="HOST:PORT",
                        help="engine lmcache, prefill: the proxy's notification socket to report transfers done to")
    parser.add_argument("--lmcache-notify", choices=LMCACHE_NOTIFY, default="after")
    parser.add_argument("--lmcache-notify-delay", type=float, default=0.0)
    parser.add_argument("--prefix-cache-blocks", type=int, default=0, help="prefix cache size in blocks (0: none)")
    parser.add_argument("--block-tokens", type=int, default=16)
    parser.add_argument("--prefill-per-block", type=float, default=0.0, help="seconds per uncached block prefilled")
    parser.add_argument("--pull-per-block", type=float, default=0.0, help="seconds per block pulled from prefill")
    parser.add_argument("--kv-events", action="store_true", help="publish vLLM KV events (prints KV_EVENTS ENDPOINT)")
    parser.add_argument("--greedy", action="store_true", help="tokens from the context, the same on every worker")
    # The proxy's own loop, so a benchmark's fake workers cost as little CPU as they can on a shared machine.
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
