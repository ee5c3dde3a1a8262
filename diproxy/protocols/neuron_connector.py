"""The NeuronConnector protocol (legacy engine, vLLM V0 Neuron fork with etcd), as neuron-proxy-server speaks it.
Both legs go out at once: prefill P gets max_tokens 1 and X-Request-Id cmpl-{uid}_{D.ip}:{D.port}, decode D the
original request and cmpl-{uid}_{P.ip}:{P.port}; the ids tell each worker its peer, and the connector moves the KV
cache between them. A stream gives the client P's first token, then D's chunks minus each choice's first one.
A failure before the client's first byte retries the pair with a fresh uid."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from diproxy import load
from diproxy.protocols.base import EngineProtocol, cap_tokens_at_one
from diproxy.routing import Call, EventStreamResponse, Router, new_uid, settle
from diproxy.sse import StreamEvent, clear_finish_reason, rewrite_id
from diproxy.upstream import Leg, UpstreamFailure
from diproxy.workers import DECODE, PREFILL, Worker

log = logging.getLogger(__name__)


async def _open_next_turn(leg: Leg) -> Any:
    """Open leg after one loop turn, in which the request the caller is building goes out first (on Python < 3.12
    aiohttp writes a request body from a task of its own, which would otherwise queue behind this leg's set-up)."""
    await asyncio.sleep(0)
    return await leg.open()


def _prefill_event(event: StreamEvent, client_id: str) -> bytes:
    rewrite_id(event.payload, client_id)
    # Prefill stops after one token by design; its 'length' stop is not the client's stop.
    clear_finish_reason(event.payload)
    return event.encode()


class NeuronConnectorProtocol(EngineProtocol):
    name = "neuron-connector"
    roles = (PREFILL, DECODE)
    phases = {load.PREFILL: PREFILL, load.DECODE: DECODE}
    summary = "both legs at once, peers named in X-Request-Id (NeuronConnector + etcd, legacy)"

    async def serve(self, router: Router, call: Call) -> web.StreamResponse:
        return await router.attempt(call, self.roles, lambda workers: self._pair(router, call, *workers))

    async def _pair(self, router: Router, call: Call, prefill: Worker, decode: Worker) -> web.StreamResponse:
        router.enter(call, load.PREFILL)  # a retried pair prefills again
        uid = new_uid()
        client_id = call.client_id(uid)
        p_leg = router.leg(prefill, call.path, cap_tokens_at_one(call.body), f"cmpl-{uid}_{decode.address}")
        d_leg = router.leg(decode, call.path, call.body, f"cmpl-{uid}_{prefill.address}")
        log.debug("routing %s: prefill %s (%s), decode %s (%s)", client_id, prefill.address, p_leg.request_id,
                  decode.address, d_leg.request_id)
        try:
            if call.streaming:
                return await self._stream(router, call, p_leg, d_leg, client_id)
            return await self._whole(router, call, p_leg, d_leg, client_id)
        finally:
            p_leg.close()
            d_leg.close()

    @staticmethod
    async def _open_both(router: Router, call: Call, p_leg: Leg, d_leg: Leg,
                         p_ready: Callable[[], Awaitable[Any]]) -> Any:
        """Open both legs at once; succeed only if prefill gives its first answer and decode accepted.
        Prefill's request is sent from this task, decode's from one that starts a loop turn later: the client waits
        for prefill's first token, so prefill's request goes on the wire before decode's is even built."""
        d_task = asyncio.ensure_future(_open_next_turn(d_leg))
        waiting_on = p_leg.worker
        try:
            async with asyncio.timeout(router.settings.first_token_timeout):
                await p_leg.open()
                first = await p_ready()
                router.enter(call, load.DECODE)
                waiting_on = d_leg.worker
                await d_task
            return first
        except asyncio.TimeoutError as exc:
            raise UpstreamFailure(waiting_on, "timeout", "no first token in time") from exc
        finally:
            await settle(d_task)

    async def _stream(self, router: Router, call: Call, p_leg: Leg, d_leg: Leg,
                      client_id: str) -> web.StreamResponse:
        first = await self._open_both(router, call, p_leg, d_leg,
                                      lambda: router.first_event(p_leg, StreamEvent.has_choices))
        seen_indices: set[int] = set()

        def decode_repeats_prefill(event: StreamEvent) -> bool:
            # The first token of each choice already went out from prefill.
            indices = event.choice_indices()
            if indices and all(i not in seen_indices for i in indices):
                seen_indices.update(indices)
                return True
            return False

        async def body(response: EventStreamResponse) -> None:
            await router.write(response, _prefill_event(first, client_id))
            router.first_byte(call)
            await self._relay_prefill_rest(router, response, p_leg, client_id)
            await router.relay(response, d_leg, client_id, skip=decode_repeats_prefill)

        return await router.stream(call, client_id, body)

    @staticmethod
    async def _relay_prefill_rest(router: Router, response: EventStreamResponse, p_leg: Leg, client_id: str) -> None:
        try:
            while (events := await p_leg.next_events()) is not None:
                # [DONE] and prefill's usage-only chunk would end or misreport the client's stream.
                out = [_prefill_event(e, client_id) for e in events if not e.is_done and e.has_choices()]
                if out:
                    await router.write(response, b"".join(out))
        except UpstreamFailure as failure:
            # Its first token is out and the KV handed over; decode alone decides the outcome now.
            router.metrics.errors.inc("prefill_tail")
            log.info("prefill stream ended early after its first token: %s", failure)

    async def _whole(self, router: Router, call: Call, p_leg: Leg, d_leg: Leg, client_id: str) -> web.StreamResponse:
        async def prefill_answer() -> bytes:
            return await p_leg.read_body(router.settings.first_token_timeout)

        await self._open_both(router, call, p_leg, d_leg, prefill_answer)
        payload = router.whole_answer(d_leg, await d_leg.read_body(router.settings.total_timeout))
        rewrite_id(payload, client_id)
        router.first_byte(call)
        return web.json_response(payload, headers={"X-Request-Id": client_id})


PROTOCOL = NeuronConnectorProtocol
