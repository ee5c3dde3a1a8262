"""Request routing: the DI flow (prefill + decode pair, NeuronConnector request ids) and the standard flow
(one standalone worker), with bounded waits, one retry before the first client byte, and SSE error events."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
from aiohttp import web

from diproxy.config import Settings
from diproxy.errors import ClientFacingError
from diproxy.metrics import ProxyMetrics
from diproxy.registry import WorkerRegistry
from diproxy.sse import StreamEvent, clear_finish_reason, error_event, rewrite_id
from diproxy.upstream import Leg, UpstreamFailure
from diproxy.workers import DECODE, PREFILL, STANDALONE, Selector, Worker, prefer_untried

log = logging.getLogger(__name__)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class EventStreamResponse(web.StreamResponse):
    """Holds the status line and headers back until the first body write, so they leave in one packet with the
    first token instead of costing a send of their own (aiohttp's web.Response does the same)."""

    _send_headers_immediately = False


class ClientGone(Exception):
    """The client closed its connection while the answer was being written."""


@dataclass
class Attempts:
    """What the retry loop has learned so far about one client request."""

    tried: set[Worker] = field(default_factory=set)
    last_failure: UpstreamFailure | None = None
    count: int = 0


def prefill_body(body: dict[str, Any]) -> dict[str, Any]:
    """The request as the prefill worker gets it: the same, but stopping after one token."""
    shaped = copy.copy(body)
    shaped["max_tokens"] = 1
    # vLLM prefers max_completion_tokens over max_tokens for chat; left as is, prefill would decode the whole answer.
    if "max_completion_tokens" in shaped:
        shaped["max_completion_tokens"] = 1
    return shaped


def client_request_id(path: str, uid: str) -> str:
    return f"{'chatcmpl' if path.endswith('/chat/completions') else 'cmpl'}-{uid}"


def failure_to_client(failure: UpstreamFailure) -> web.Response | ClientFacingError:
    if failure.is_client_error:
        return web.Response(status=failure.upstream_status or 400, body=failure.body or b"",
                            content_type="application/json")
    code = "upstream_timeout" if failure.kind == "timeout" else f"upstream_{failure.kind}"
    message = f"upstream {failure.worker.role} worker failed: {failure.detail}"
    return ClientFacingError(failure.client_status, message, "upstream_error", code)


async def _open_next_turn(leg: Leg) -> Any:
    """Open leg after one loop turn, in which the request the caller is building goes out first (on Python < 3.12
    aiohttp writes a request body from a task of its own, which would otherwise queue behind this leg's set-up)."""
    await asyncio.sleep(0)
    return await leg.open()


async def _settle(task: asyncio.Future) -> None:
    """Stop task if it still runs and take its outcome, so no exception is reported as never retrieved.
    A task already done is settled without the loop turn that asyncio.gather would cost before the first byte."""
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    elif not task.cancelled():
        task.exception()


class Router:
    def __init__(self, settings: Settings, registry: WorkerRegistry, session: aiohttp.ClientSession,
                 metrics: ProxyMetrics, selector: Selector) -> None:
        self.settings = settings
        self.registry = registry
        self.session = session
        self.metrics = metrics
        self.selector = selector
        self.upstream_headers = (
            {"Authorization": f"Bearer {settings.upstream_api_key}"} if settings.upstream_api_key else {}
        )

    # -- shared pieces --------------------------------------------------------------------------
    def _roles(self) -> tuple[str, ...]:
        return (STANDALONE,) if self.settings.mode == "standard" else (PREFILL, DECODE)

    def has_capacity(self) -> bool:
        return all(self.registry.usable(role) for role in self._roles())

    async def _pick(self, attempts: Attempts, wait: float) -> tuple[Worker, ...] | None:
        if not await self.registry.wait_for(self.has_capacity, wait):
            return None
        return tuple(self.selector.pick(prefer_untried(self.registry.usable(role), attempts.tried))
                     for role in self._roles())

    def _leg(self, worker: Worker, path: str, body: dict[str, Any], request_id: str) -> Leg:
        return Leg(self.session, worker, path, body, request_id, self.settings.connect_timeout,
                   self.settings.idle_timeout, self.upstream_headers)

    def _record_failure(self, failure: UpstreamFailure) -> None:
        self.metrics.errors.inc(f"upstream_{failure.kind}")
        if failure.kind == "connect":
            self.registry.mark_unreachable(failure.worker)
        log.warning("attempt failed: %s", failure)

    async def handle(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """Run attempts until one answers the client; failures before the first byte move to another worker."""
        start = time.monotonic()
        attempts = Attempts()
        deadline = start + self.settings.pair_wait_timeout
        streaming = bool(body.get("stream", False))
        while True:
            first_attempt = attempts.count == 0
            workers = await self._pick(attempts, max(0.0, deadline - time.monotonic()))
            if workers is None:
                if attempts.last_failure is not None:
                    return self._give_up(attempts.last_failure)
                self.metrics.errors.inc("no_worker")
                raise ClientFacingError(
                    503, f"no {'endpoint' if self.settings.mode == 'standard' else 'prefill/decode pair'} available",
                    "service_unavailable", "no_worker_available", {"Retry-After": str(self.settings.retry_after)})
            if not first_attempt:
                self.metrics.retries.inc()
            attempts.count += 1
            attempts.tried.update(workers)
            for worker in workers:
                worker.in_flight += 1
            try:
                if self.settings.mode == "standard":
                    return await self._standard(request, body, streaming, workers[0], start)
                return await self._disaggregated(request, body, streaming, workers[0], workers[1], start)
            except UpstreamFailure as failure:
                self._record_failure(failure)
                attempts.last_failure = failure
                if failure.is_client_error or attempts.count > self.settings.max_retries:
                    return self._give_up(failure)
            finally:
                for worker in workers:
                    worker.in_flight -= 1

    def _give_up(self, failure: UpstreamFailure) -> web.StreamResponse:
        outcome = failure_to_client(failure)
        if isinstance(outcome, ClientFacingError):
            raise outcome
        return outcome

    async def _write(self, response: web.StreamResponse, data: bytes, last: bool = False) -> None:
        try:
            if last:
                await response.write_eof(data)
            else:
                await response.write(data)
        except (ConnectionError, RuntimeError, aiohttp.ClientConnectionResetError) as exc:
            raise ClientGone() from exc

    async def _stream_failed(self, response: web.StreamResponse, failure: UpstreamFailure) -> None:
        """After bytes went out there is no retry: tell the client in-band and end without [DONE]."""
        self._record_failure(failure)
        self.metrics.errors.inc("stream_interrupted")
        code = "upstream_timeout" if failure.kind == "timeout" else f"upstream_{failure.kind}"
        try:
            await response.write(error_event(f"upstream {failure.worker.role} worker failed mid-stream: "
                                             f"{failure.detail}", "upstream_error", code))
            await response.write_eof()
        except (ConnectionError, RuntimeError, aiohttp.ClientConnectionResetError):
            pass

    def _first_byte(self, path: str, start: float) -> None:
        self.metrics.ttft.observe(time.monotonic() - start, path)

    # -- disaggregated flow -----------------------------------------------------------------
    async def _disaggregated(self, request: web.Request, body: dict[str, Any], streaming: bool,
                             prefill: Worker, decode: Worker, start: float) -> web.StreamResponse:
        uid = str(uuid.uuid4())
        path = request.path
        client_id = client_request_id(path, uid)
        p_leg = self._leg(prefill, path, prefill_body(body), f"cmpl-{uid}_{decode.address}")
        d_leg = self._leg(decode, path, body, f"cmpl-{uid}_{prefill.address}")
        log.debug("routing %s: prefill %s (%s), decode %s (%s)", client_id, prefill.address, p_leg.request_id,
                  decode.address, d_leg.request_id)
        try:
            if streaming:
                return await self._disaggregated_stream(request, p_leg, d_leg, client_id, start)
            return await self._disaggregated_whole(p_leg, d_leg, client_id, start, path)
        finally:
            p_leg.close()
            d_leg.close()

    async def _open_both(self, p_leg: Leg, d_leg: Leg, p_ready: Callable[[], Any]) -> Any:
        """Open both legs at once; succeed only if prefill gives its first answer and decode accepted.
        Prefill's request is sent from this task, decode's from one that starts a loop turn later: the client waits
        for prefill's first token, so prefill's request goes on the wire before decode's is even built."""
        d_task = asyncio.ensure_future(_open_next_turn(d_leg))
        waiting_on = p_leg.worker
        try:
            async with asyncio.timeout(self.settings.first_token_timeout):
                await p_leg.open()
                first = await p_ready()
                waiting_on = d_leg.worker
                await d_task
            return first
        except asyncio.TimeoutError as exc:
            raise UpstreamFailure(waiting_on, "timeout", "no first token in time") from exc
        except UpstreamFailure:
            raise
        finally:
            await _settle(d_task)

    async def _disaggregated_stream(self, request: web.Request, p_leg: Leg, d_leg: Leg, client_id: str,
                                    start: float) -> web.StreamResponse:
        async def first_prefill_event() -> StreamEvent:
            while True:
                event = await p_leg.next_event()
                if event is None:
                    raise UpstreamFailure(p_leg.worker, "stream", "prefill stream ended before its first token")
                if event.has_choices():
                    return event

        first = await self._open_both(p_leg, d_leg, first_prefill_event)
        response = EventStreamResponse(status=200, headers={**SSE_HEADERS, "X-Request-Id": client_id})
        try:
            await response.prepare(request)
            await self._write(response, self._prefill_event(first, client_id))
            self._first_byte(request.path, start)
            await self._relay_prefill_rest(response, p_leg, client_id)
            await self._relay_decode(response, d_leg, client_id)
            await response.write_eof()
        except UpstreamFailure as failure:
            await self._stream_failed(response, failure)
        except ClientGone:
            self.metrics.errors.inc("client_disconnect")
        return response

    @staticmethod
    def _prefill_event(event: StreamEvent, client_id: str) -> bytes:
        rewrite_id(event.payload, client_id)
        clear_finish_reason(event.payload)
        return event.encode()

    async def _relay_prefill_rest(self, response: web.StreamResponse, p_leg: Leg, client_id: str) -> None:
        try:
            while (events := await p_leg.next_events()) is not None:
                # [DONE] and prefill's usage-only chunk would end or misreport the client's stream.
                out = [self._prefill_event(e, client_id) for e in events if not e.is_done and e.has_choices()]
                if out:
                    await self._write(response, b"".join(out))
        except UpstreamFailure as failure:
            # Its first token is out and the KV handed over; decode alone decides the outcome now.
            self.metrics.errors.inc("prefill_tail")
            log.info("prefill stream ended early after its first token: %s", failure)

    async def _relay_decode(self, response: web.StreamResponse, d_leg: Leg, client_id: str) -> None:
        """Forward decode's events; whatever arrived in one upstream read goes out in one write."""
        seen_indices: set[int] = set()
        finished = False
        while (events := await d_leg.next_events()) is not None:
            out = []
            for event in events:
                if event.is_done:
                    finished = True
                    out.append(event.encode())
                    continue
                indices = event.choice_indices()
                if indices and all(i not in seen_indices for i in indices):
                    # The first token of each choice already went out from prefill.
                    seen_indices.update(indices)
                    continue
                out.append(event.encode_with_id(client_id))
            # A clean end read together with [DONE] closes the client's stream in the same write.
            last = finished and d_leg.ended
            if out or last:
                await self._write(response, b"".join(out), last)
        if not finished:
            raise UpstreamFailure(d_leg.worker, "stream", "decode stream ended without [DONE]")

    async def _disaggregated_whole(self, p_leg: Leg, d_leg: Leg, client_id: str, start: float,
                                   path: str) -> web.StreamResponse:
        async def prefill_answer() -> bytes:
            return await p_leg.read_body(self.settings.first_token_timeout)

        await self._open_both(p_leg, d_leg, prefill_answer)
        raw = await d_leg.read_body(self.settings.total_timeout)
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise UpstreamFailure(d_leg.worker, "stream", "decode answered non-JSON") from exc
        rewrite_id(payload, client_id)
        self._first_byte(path, start)
        return web.json_response(payload, headers={"X-Request-Id": client_id})

    # -- standard flow ------------------------------------------------------------------------
    async def _standard(self, request: web.Request, body: dict[str, Any], streaming: bool, worker: Worker,
                        start: float) -> web.StreamResponse:
        uid = str(uuid.uuid4())
        client_id = client_request_id(request.path, uid)
        leg = self._leg(worker, request.path, body, f"cmpl-{uid}")
        try:
            if not streaming:
                async with asyncio.timeout(self.settings.first_token_timeout):
                    upstream = await leg.open()
                raw = await leg.read_body(self.settings.total_timeout)
                self._first_byte(request.path, start)
                return web.Response(status=200, body=raw, content_type=upstream.content_type,
                                    headers={"X-Request-Id": client_id})
            async with asyncio.timeout(self.settings.first_token_timeout):
                upstream = await leg.open()
                chunk = await leg.read_chunk()
            if not chunk:
                raise UpstreamFailure(worker, "stream", "empty answer")
        except asyncio.TimeoutError as exc:
            leg.close()
            raise UpstreamFailure(worker, "timeout", "no first token in time") from exc
        except UpstreamFailure:
            leg.close()
            raise
        response = EventStreamResponse(status=200, headers={**SSE_HEADERS, "X-Request-Id": client_id})
        try:
            await response.prepare(request)
            await self._write(response, chunk)
            self._first_byte(request.path, start)
            while chunk := await leg.read_chunk():
                await self._write(response, chunk)
            await response.write_eof()
        except UpstreamFailure as failure:
            await self._stream_failed(response, failure)
        except ClientGone:
            self.metrics.errors.inc("client_disconnect")
        finally:
            leg.close()
        return response
