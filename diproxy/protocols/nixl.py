"""The NIXL protocol (vLLM NixlConnector / NeuronNixlConnector, the vLLM Neuron plugin's DI), as vLLM's and the
vLLM Neuron examples' toy_proxy_server.py speak it, with DiStack's pools, retries and timeouts.

1. Prefill first, alone: the request with max_tokens 1, stream false, no stream_options, no min_tokens, and
   kv_transfer_params asking for a remote decode. vLLM answers with kv_transfer_params naming its KV blocks and
   its NIXL side channel, and keeps the blocks until a decode reads them (or VLLM_NIXL_ABORT_REQUEST_TIMEOUT, 480 s).
2. Decode: the client's request as it came, plus those kv_transfer_params with remote_host set to the prefill
   worker's address (vLLM reports VLLM_NIXL_SIDE_CHANNEL_HOST, 0.0.0.0 when bound to all interfaces). Decode
   pulls the blocks over NIXL and generates the whole answer, which goes to the client.
Both legs carry the same X-Request-Id. Prefill and decode are picked independently. A prefill failure retries on
another prefill worker; a decode failure before the client's first byte retries on another decode worker with the
same kv_transfer_params (the blocks are still held).
With cache-aware routing (diproxy/prefix_routing.py) decode is chosen first, and when the PD decider finds that it
lacks only a short part of the prompt, decode serves the request alone: no prefill hop and no kv_transfer_params,
so vLLM prefills locally (scheduler.py@053da34b get_num_new_matched_tokens: nothing to pull without them).
A stream whose decode dies after the client's first byte can be carried to a new pair (reopen, Router.relay_to_end).
Sources: vllm-project/vllm:tests/v1/kv_connector/nixl_integration/toy_proxy_server.py@030ea52e
(send_request_to_service), jinhuang12/vllm-neuron:examples/vllm_neuron/vllm/disaggregated_inference/
toy_proxy_server.py@ed3580d0 (remote_host rewrite), vllm-project/vllm:vllm/distributed/kv_transfer/kv_connector/
v1/nixl/scheduler.py@053da34b (request_finished: what prefill returns)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

from aiohttp import web

from diproxy import load
from diproxy.etcd_gateway import EtcdGateway
from diproxy.handoff_registry import HandoffPublisher
from diproxy.handoffs import HandoffTracker, Pending
from diproxy.metrics import Counter, Metric
from diproxy.protocols.base import EngineProtocol, cap_tokens_at_one
from diproxy.routing import Call, EventStreamResponse, Router, new_uid
from diproxy.sse import StreamEvent, rewrite_id
from diproxy.upstream import Leg, UpstreamFailure
from diproxy.workers import DECODE, PREFILL, Worker

log = logging.getLogger(__name__)

KV_TRANSFER_PARAMS = "kv_transfer_params"
# What a prefill is asked for: keep the KV for a remote decode. Exactly the reference proxies' dict.
ASK_REMOTE_DECODE = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                     "remote_block_ids": None, "remote_host": None, "remote_port": None}
# Parameters vLLM's prefill does not support; the upstream proxy pops them for P and keeps them for D.
_PREFILL_UNSUPPORTED = ("min_tokens", "min_completion_tokens")


def prefill_request(body: dict[str, Any], kv_transfer_params: dict[str, Any] = ASK_REMOTE_DECODE) -> dict[str, Any]:
    """Prefill's one-token, non-streamed copy of the client's request, carrying KV_TRANSFER_PARAMS (NIXL: ask for a
    remote decode; LMCache: the disagg_spec naming the receiver)."""
    shaped = cap_tokens_at_one(body)
    shaped["stream"] = False
    shaped.pop("stream_options", None)
    for key in _PREFILL_UNSUPPORTED:
        shaped.pop(key, None)
    # A client's own kv_transfer_params are never forwarded: they could point a worker at any host.
    shaped[KV_TRANSFER_PARAMS] = dict(kv_transfer_params)
    return shaped


def decode_request(body: dict[str, Any], kv_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Decode's copy of the client's request: the client's kv_transfer_params dropped, prefill's (if any) added."""
    shaped = dict(body)
    shaped.pop(KV_TRANSFER_PARAMS, None)
    if kv_params is not None:
        shaped[KV_TRANSFER_PARAMS] = kv_params
    return shaped


@dataclass(frozen=True)
class Handoff:
    """What a finished prefill hands to decode."""

    uid: str  # the X-Request-Id both legs carry
    prefill: Worker | None  # None: decode serves alone (the PD decider)
    kv_params: dict[str, Any] | None  # None: prefill stopped before max_tokens and returned none


class NixlProtocol(EngineProtocol):
    name = "nixl"
    roles = (PREFILL, DECODE)
    phases = {load.PREFILL: PREFILL, load.DECODE: DECODE}
    summary = "prefill first with kv_transfer_params, then decode with prefill's (NixlConnector, vLLM Neuron plugin)"
    migrates = True

    def __init__(self, options: object = None) -> None:
        super().__init__(options)
        self.kv_transfer_skipped = Counter(
            "diproxy_kv_transfer_skipped_total",
            "NIXL: prefill answers without kv_transfer_params (stopped before max_tokens); decode prefilled locally.")
        # Handoffs from prefill answered to decode started, and the release of abandoned ones (diproxy/handoffs.py).
        self.handoffs = HandoffTracker()

    @property
    def metrics(self) -> Sequence[Metric]:
        return (self.kv_transfer_skipped, *self.handoffs.metrics)

    async def run_beside(self, gateway: EtcdGateway | None, etcd_prefix: str) -> None:
        publisher = HandoffPublisher(self.handoffs, gateway, etcd_prefix) if gateway is not None else None
        try:
            if publisher is not None:
                await publisher.run()
            else:
                await asyncio.Event().wait()
        finally:
            await self.handoffs.close()
            if publisher is not None:
                await publisher.close()

    async def serve(self, router: Router, call: Call) -> web.StreamResponse:
        handoff = await self._handoff(router, call)
        router.enter(call, load.DECODE)
        body = decode_request(call.body, handoff.kv_params)
        pending = self.handoffs.open(handoff.prefill.address) if handoff.kv_params is not None else None
        try:
            return await router.attempt(call, (DECODE,),
                                        lambda workers: self._decode(router, call, workers[0], body, handoff, pending))
        finally:
            if pending is not None and not pending.closed:
                if pending.decode_sent:
                    # A decode worker may hold the request: vLLM's own abort (or its pull) frees the blocks.
                    pending.close()
                else:
                    # The client left (or no decode took it) before any decode had the request: read and free them.
                    self.handoffs.release(pending, lambda: _release_read(router, call, handoff))

    async def _handoff(self, router: Router, call: Call) -> Handoff:
        if router.decode_first(call):
            return Handoff(new_uid(), None, None)  # the PD decider: decode prefills the short uncached part itself
        return await router.attempt(call, (PREFILL,), lambda workers: self._prefill(router, call, workers[0]))

    async def reopen(self, router: Router, call: Call,
                     avoid: tuple[Worker, ...]) -> tuple[Leg, StreamEvent]:
        handoff = await self._handoff(router, call)
        body = decode_request(call.body, handoff.kv_params)
        return await router.attempt(call, (DECODE,), lambda workers: open_decode_stream(
            router, call, workers[0], body, handoff.uid), avoid)

    async def _prefill(self, router: Router, call: Call, prefill: Worker) -> Handoff:
        uid = new_uid()
        params = (await router.one_token_answer(prefill, call.path, prefill_request(call.body), uid)).get(
            KV_TRANSFER_PARAMS)
        if not isinstance(params, dict) or not params:
            # vLLM returns them only when prefill stopped at max_tokens (FINISHED_LENGTH_CAPPED); a prompt that ends
            # on EOS or a stop string at once has none, and decode then prefills it locally.
            self.kv_transfer_skipped.inc()
            log.info("prefill %s returned no kv_transfer_params; decode prefills locally", prefill.address)
            return Handoff(uid, prefill, None)
        # vLLM reports its side-channel bind address (0.0.0.0 in the Neuron tutorial); decode needs a routable one.
        return Handoff(uid, prefill, {**params, "remote_host": prefill.host})

    async def _decode(self, router: Router, call: Call, decode: Worker, body: dict[str, Any],
                      handoff: Handoff, pending: Pending | None = None) -> web.StreamResponse:
        log.debug("routing %s: prefill %s, decode %s", call.client_id(handoff.uid),
                  handoff.prefill.address if handoff.prefill else "none (decode alone)", decode.address)
        return await answer_from_decode(router, call, decode, body, handoff.uid, pending)


async def _release_read(router: Router, call: Call, handoff: Handoff) -> None:
    """The one-token decode that reads an abandoned handoff's blocks, so its prefill frees them (diproxy/handoffs.py
    says why this way); its answer is discarded."""
    body = decode_request(prefill_request(call.body, {}), handoff.kv_params)
    start = time.monotonic()
    # In the decode phase: it needs a decode only, whatever became of the prefills.
    release = Call(call.request, body, start, start + router.settings.pair_wait_timeout, phase=load.DECODE)
    await router.attempt(release, (DECODE,),
                         lambda workers: router.one_token_answer(workers[0], call.path, body, new_uid()))


async def answer_from_decode(router: Router, call: Call, decode: Worker, body: dict[str, Any],
                             uid: str, pending: Pending | None = None) -> web.StreamResponse:
    """Decode's whole answer (or stream, as the client asked) to the client, ids rewritten to the client's; a
    failure before the client's first byte raises UpstreamFailure for the caller's attempt to retry. Shared by the
    protocols whose decode leg generates the whole answer (nixl, lmcache). PENDING (NIXL) is the handoff this decode
    ends: marked sent before the request goes out, closed at decode's answer (streamed: its first event)."""
    client_id = call.client_id(uid)
    leg = router.leg(decode, call.path, body, uid)
    if pending is not None:
        pending.decode_sent = True
    try:
        if not call.streaming:
            try:
                async with asyncio.timeout(router.settings.first_token_timeout):
                    await leg.open()
            except asyncio.TimeoutError as exc:
                raise UpstreamFailure(decode, "timeout", "decode did not answer in time") from exc
            if pending is not None:
                pending.close(started=True)
            payload = router.whole_answer(leg, await leg.read_body(router.settings.total_timeout))
            rewrite_id(payload, client_id)
            router.first_byte(call)
            return web.json_response(payload, headers={"X-Request-Id": client_id})
        first = await _first_event(router, leg)
        if pending is not None:
            pending.close(started=True)

        async def stream_body(response: EventStreamResponse) -> None:
            await router.write(response, _client_event(first, client_id))
            router.first_byte(call)
            if not first.is_done:
                await router.relay_to_end(call, response, leg, client_id, first)
            else:
                await router.write(response, b"", last=True)

        return await router.stream(call, client_id, stream_body)
    except UpstreamFailure as failure:
        if pending is not None and failure.kind == "connect":
            pending.decode_sent = False  # the request never reached that decode: no vLLM holds it
        raise
    finally:
        leg.close()


async def _first_event(router: Router, leg: Leg) -> StreamEvent:
    try:
        async with asyncio.timeout(router.settings.first_token_timeout):
            await leg.open()
            return await router.first_event(leg, lambda event: True)
    except asyncio.TimeoutError as exc:
        raise UpstreamFailure(leg.worker, "timeout", "no first token in time") from exc


async def open_decode_stream(router: Router, call: Call, decode: Worker, body: dict[str, Any],
                             uid: str) -> tuple[Leg, StreamEvent]:
    """A decode stream opened up to its first event (a migration's continuation); the leg is closed on failure."""
    leg = router.leg(decode, call.path, body, uid)
    try:
        return leg, await _first_event(router, leg)
    except BaseException:
        leg.close()
        raise


def _client_event(event: StreamEvent, client_id: str) -> bytes:
    return event.encode() if event.is_done else event.encode_with_id(client_id)


PROTOCOL = NixlProtocol
