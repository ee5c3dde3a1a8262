"""What every protocol shares: picking workers (least in flight, skipping backed-off ones), bounded retries before
the first byte to the client, upstream legs, writing SSE to the client, metrics. The engine's request flow is a
protocol module (diproxy/protocols/); the Router knows none of them."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

import aiohttp
from aiohttp import web

from diproxy.errors import ClientFacingError, worker_error
from diproxy.metrics import ProxyMetrics
from diproxy.registry import WorkerRegistry
from diproxy.sse import DONE_EVENT, StreamEvent, error_event
from diproxy.upstream import Leg, UpstreamFailure
from diproxy.workers import Selector, Worker, not_backed_off, prefer_untried

if TYPE_CHECKING:
    from diproxy.config import Settings
    from diproxy.protocols.base import EngineProtocol

log = logging.getLogger(__name__)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
T = TypeVar("T")


class EventStreamResponse(web.StreamResponse):
    """Holds the status line and headers back until the first body write, so they leave in one packet with the
    first token instead of costing a send of their own (aiohttp's web.Response does the same)."""

    _send_headers_immediately = False
    last_write = 0.0  # monotonic time of the last chunk written, 0 before the first (for the inter-token latency)


class ClientGone(Exception):
    """The client closed its connection while the answer was being written."""


@dataclass
class Attempts:
    """What the retry loop has learned so far about one stage of one client request."""

    tried: set[Worker] = field(default_factory=set)
    last_failure: UpstreamFailure | None = None
    count: int = 0


@dataclass
class Call:
    """One client request as the protocols see it."""

    request: web.Request
    body: dict[str, Any]
    start: float
    deadline: float  # loop-independent monotonic time after which no worker is waited for
    phase: str | None = None  # diproxy/load.py: where the request is, for the per-role load

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def streaming(self) -> bool:
        return bool(self.body.get("stream", False))

    def client_id(self, uid: str) -> str:
        return client_request_id(self.path, uid)


def new_uid() -> str:
    return str(uuid.uuid4())


def client_request_id(path: str, uid: str) -> str:
    return f"{'chatcmpl' if path.endswith('/chat/completions') else 'cmpl'}-{uid}"


def failure_to_client(failure: UpstreamFailure) -> web.Response | ClientFacingError:
    """The answer for a request whose last attempt failed before the client got a byte."""
    if failure.is_client_error:
        # The worker's own status and error: the request is at fault, and the client should learn why.
        if failure.error is not None:
            return web.json_response(failure.error.body(), status=failure.upstream_status or 400)
        return web.Response(status=failure.upstream_status or 400, body=failure.body or b"",
                            content_type="application/json")
    detail = failure.detail
    if failure.kind == "status" and failure.error is not None:
        detail = f"{detail}: {failure.error.message}"
    status = failure.client_status
    headers = {"Retry-After": "1"} if status == 503 else None
    return ClientFacingError(status, f"upstream {failure.worker.role} worker failed: {detail}", "upstream_error",
                             failure.code, headers)


async def settle(task: asyncio.Future) -> None:
    """Stop task if it still runs and take its outcome, so no exception is reported as never retrieved.
    A task already done is settled without the loop turn that asyncio.gather would cost before the first byte."""
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    elif not task.cancelled():
        task.exception()


class Router:
    def __init__(self, settings: "Settings", registry: WorkerRegistry, session: aiohttp.ClientSession,
                 metrics: ProxyMetrics, selector: Selector, protocol: "EngineProtocol") -> None:
        self.settings = settings
        self.registry = registry
        self.session = session
        self.metrics = metrics
        self.selector = selector
        self.protocol = protocol
        self.upstream_headers = (
            {"Authorization": f"Bearer {settings.upstream_api_key}"} if settings.upstream_api_key else {}
        )

    # -- pools --------------------------------------------------------------------------------
    def roles(self) -> tuple[str, ...]:
        return self.protocol.roles

    def has_capacity(self) -> bool:
        return all(self.registry.usable(role) for role in self.roles())

    async def _pick(self, call: Call, roles: tuple[str, ...], attempts: Attempts) -> tuple[Worker, ...] | None:
        """One worker per role, once every role of the protocol has a usable worker (a prefill is not started
        while no decode could take its KV); a request past its first phase needs only ROLES (a decode for KV already
        prefilled, even while its prefill drains). Untried workers first, then those outside their back-off; if all
        are backed off, the request waits for the earliest one's back-off to end (at most workers.BACKOFF_MAX)."""
        first = call.phase in (None, next(iter(self.protocol.phases), None))
        ready = self.has_capacity if first else (lambda: all(self.registry.usable(role) for role in roles))
        if not await self.registry.wait_for(ready, max(0.0, call.deadline - time.monotonic())):
            return None
        loop = asyncio.get_running_loop()
        now = loop.time()
        picked = tuple(self.selector.pick(not_backed_off(prefer_untried(self.registry.usable(role), attempts.tried),
                                                         now)) for role in roles)
        wait = max(w.backoff_until for w in picked) - now
        if wait > 0:
            await asyncio.sleep(wait)
        return picked

    # -- attempts -----------------------------------------------------------------------------
    async def attempt(self, call: Call, roles: tuple[str, ...],
                      run: Callable[[tuple[Worker, ...]], Awaitable[T]]) -> T:
        """run(workers) on freshly picked workers until it succeeds, fails in a way no other worker would fix
        (UpstreamFailure.retryable), or --max-retries extra attempts are spent; the last failure is raised."""
        attempts = Attempts()
        while True:
            workers = await self._pick(call, roles, attempts)
            if workers is None:
                if attempts.last_failure is not None:
                    raise attempts.last_failure
                self.metrics.errors.inc("no_worker")
                raise ClientFacingError(
                    503, f"no {'endpoint' if self.settings.mode == 'standard' else 'prefill/decode pair'} available",
                    "service_unavailable", "no_worker_available", {"Retry-After": str(self.settings.retry_after)})
            if attempts.count:
                self.metrics.retries.inc()
            attempts.count += 1
            attempts.tried.update(workers)
            for worker in workers:
                worker.in_flight += 1
            try:
                return await run(workers)
            except UpstreamFailure as failure:
                self.record_failure(failure)
                attempts.last_failure = failure
                if not failure.retryable or attempts.count > self.settings.max_retries:
                    raise
            finally:
                for worker in workers:
                    worker.in_flight -= 1

    def record_failure(self, failure: UpstreamFailure) -> None:
        self.metrics.errors.inc(failure.code)
        if failure.kind == "connect":
            self.registry.note_refused(failure.worker)
        log.warning("attempt failed: %s", failure)

    async def handle(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        start = time.monotonic()
        call = Call(request, body, start, start + self.settings.pair_wait_timeout)
        self.enter(call, next(iter(self.protocol.phases)))
        try:
            return await self.protocol.serve(self, call)
        except UpstreamFailure as failure:
            outcome = failure_to_client(failure)
            if isinstance(outcome, ClientFacingError):
                raise outcome
            return outcome
        finally:
            self.enter(call, None)

    def enter(self, call: Call, phase: str | None) -> None:
        """The request moves to phase (one of the protocol's phases; None: it ended), for the per-role load."""
        if call.phase != phase:
            self.metrics.load.move(call.phase, phase)
            call.phase = phase

    # -- upstream and client I/O ----------------------------------------------------------------
    def leg(self, worker: Worker, path: str, body: dict[str, Any], request_id: str) -> Leg:
        return Leg(self.session, worker, path, body, request_id, self.settings.connect_timeout,
                   self.settings.idle_timeout, self.upstream_headers)

    async def one_token_answer(self, worker: Worker, path: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        """A prefill's whole one-token answer (the DI protocols send prefill max_tokens 1), bounded by
        --first-token-timeout; an error object or a timeout fails the attempt."""
        leg = self.leg(worker, path, body, request_id)
        try:
            async with asyncio.timeout(self.settings.first_token_timeout):
                await leg.open()
                raw = await leg.read_body(self.settings.first_token_timeout)
        except asyncio.TimeoutError as exc:
            raise UpstreamFailure(worker, "timeout", "prefill did not answer in time") from exc
        finally:
            leg.close()
        return self.whole_answer(leg, raw)

    def first_byte(self, call: Call) -> None:
        self.metrics.ttft.observe(time.monotonic() - call.start, call.path)

    async def write(self, response: EventStreamResponse, data: bytes, last: bool = False) -> None:
        if data and data != DONE_EVENT:
            now = time.monotonic()
            if response.last_write:
                self.metrics.inter_token.observe(now - response.last_write)
            response.last_write = now
        try:
            if last:
                await response.write_eof(data)
            else:
                await response.write(data)
        except (ConnectionError, RuntimeError, aiohttp.ClientConnectionResetError) as exc:
            raise ClientGone() from exc

    async def stream(self, call: Call, client_id: str,
                     body: Callable[[EventStreamResponse], Awaitable[None]]) -> web.StreamResponse:
        """Answer with an event stream whose content body() writes. From here on the client has its status line:
        an upstream failure becomes an error event and the stream ends without [DONE]; no retry."""
        response = EventStreamResponse(status=200, headers={**SSE_HEADERS, "X-Request-Id": client_id})
        try:
            await response.prepare(call.request)
            await body(response)
        except UpstreamFailure as failure:
            await self._stream_failed(response, failure)
        except ClientGone:
            self.metrics.errors.inc("client_disconnect")
        return response

    async def _stream_failed(self, response: web.StreamResponse, failure: UpstreamFailure) -> None:
        self.record_failure(failure)
        self.metrics.errors.inc("stream_interrupted")
        try:
            if not failure.forwarded:
                await response.write(error_event(f"upstream {failure.worker.role} worker failed mid-stream: "
                                                 f"{failure.detail}", "upstream_error", failure.code))
            await response.write_eof()
        except (ConnectionError, RuntimeError, aiohttp.ClientConnectionResetError):
            pass

    async def relay(self, response: EventStreamResponse, leg: Leg, client_id: str,
                    skip: Callable[[StreamEvent], bool] | None = None) -> None:
        """Forward leg's events with their ids set to client_id, until [DONE]; whatever arrived in one upstream read
        goes out in one write. A worker's error event is forwarded as sent and ends the stream (without [DONE])."""
        finished = False
        while (events := await leg.next_events()) is not None:
            out = []
            for event in events:
                if event.is_done:
                    finished = True
                    out.append(event.encode())
                    continue
                if skip is not None and skip(event):
                    continue
                error = worker_error(event.payload)
                if error is not None:
                    out.append(event.encode())
                    await self.write(response, b"".join(out))
                    failure = UpstreamFailure.from_worker_error(leg.worker, error)
                    failure.forwarded = True
                    raise failure
                out.append(event.encode_with_id(client_id))
            # A clean end read together with [DONE] closes the client's stream in the same write.
            last = finished and leg.ended
            if out or last:
                await self.write(response, b"".join(out), last)
        if not finished:
            raise UpstreamFailure(leg.worker, "stream", f"{leg.worker.role} stream ended without [DONE]")
        await self.write(response, b"", last=True)  # no-op if the last write already ended the stream

    async def first_event(self, leg: Leg, wanted: Callable[[StreamEvent], bool]) -> StreamEvent:
        """The first event wanted() accepts; a worker's error event before it fails the attempt with the worker's
        status and error (so a 4xx is passed through, not retried), as does the end of the stream."""
        while True:
            event = await leg.next_event()
            if event is None:
                raise UpstreamFailure(leg.worker, "stream", f"{leg.worker.role} stream ended before its first token")
            error = worker_error(event.payload)
            if error is not None:
                raise UpstreamFailure.from_worker_error(leg.worker, error)
            if wanted(event):
                return event

    @staticmethod
    def whole_answer(leg: Leg, raw: bytes) -> dict[str, Any]:
        """A non-streaming answer's JSON object; an error object in it fails the attempt like an error status."""
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise UpstreamFailure(leg.worker, "stream", f"{leg.worker.role} answered non-JSON") from exc
        if not isinstance(payload, dict):
            raise UpstreamFailure(leg.worker, "stream", f"{leg.worker.role} answered JSON that is not an object")
        error = worker_error(payload)
        if error is not None:
            raise UpstreamFailure.from_worker_error(leg.worker, error)
        return payload
