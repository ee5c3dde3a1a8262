"""What every protocol shares: picking workers (blind: least in flight or round robin; or by cached prefix,
diproxy/prefix_routing.py; skipping backed-off ones), bounded retries before the first byte to the client, carrying
a stream to a new pair when its decode dies after it (diproxy/stream_migration.py), upstream legs, writing SSE to the
client, metrics. The engine's request flow is a protocol module (diproxy/protocols/); the Router knows none of them."""

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

from diproxy.cache_routing.migration import plan, refusal
from diproxy.errors import ClientFacingError, worker_error
from diproxy.metrics import ProxyMetrics
from diproxy.prefix_routing import PrefixRouting, Route
from diproxy.registry import WorkerRegistry
from diproxy.sse import DONE_EVENT, StreamEvent, error_event
from diproxy.stream_migration import MIGRATING_KINDS, StreamProgress
from diproxy.upstream import Leg, UpstreamFailure
from diproxy.workers import DECODE, Selector, Worker, not_backed_off, prefer_untried

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
    route: Route | None = None  # cache-aware routing's state for this request (None: blind)

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
                 metrics: ProxyMetrics, selector: Selector, protocol: "EngineProtocol",
                 routing: PrefixRouting | None = None) -> None:
        self.settings = settings
        self.routing = routing if routing is not None and routing.enabled else None
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
        chosen: dict[str, Worker] = {}
        # Decode first: with cache-aware routing, decode's choice is made before prefill's (llm-d's order).
        for role in sorted(roles, key=lambda r: r != DECODE):
            chosen[role] = self._choose(call, role, not_backed_off(
                prefer_untried(self.registry.usable(role), attempts.tried), now))
        picked = tuple(chosen[role] for role in roles)
        wait = max(w.backoff_until for w in picked) - now
        if wait > 0:
            await asyncio.sleep(wait)
        return picked

    def _choose(self, call: Call, role: str, candidates: list[Worker]) -> Worker:
        route = call.route
        if route is None or self.routing is None:
            return self.selector.pick(candidates)
        if role == DECODE and route.decode is not None:
            decode, route.decode = route.decode, None  # chosen before prefill: only the first decode pick uses it
            if decode in candidates:
                return decode
        return self.routing.choose(role, candidates, route)

    def decode_first(self, call: Call) -> bool:
        """Cache-aware routing: choose the decode worker now, before prefill, for the first decode pick; True when
        the PD decider has decode serve the request alone (no prefill hop, no kv_transfer_params)."""
        if call.route is None or self.routing is None:
            return False
        candidates = not_backed_off(self.registry.usable(DECODE), asyncio.get_running_loop().time())
        if not candidates:
            return False  # the prefill attempt waits for a pair as before
        return self.routing.choose_decode_first(call.route, candidates)

    # -- attempts -----------------------------------------------------------------------------
    async def attempt(self, call: Call, roles: tuple[str, ...],
                      run: Callable[[tuple[Worker, ...]], Awaitable[T]], avoid: tuple[Worker, ...] = ()) -> T:
        """run(workers) on freshly picked workers until it succeeds, fails in a way no other worker would fix
        (UpstreamFailure.retryable), or --max-retries extra attempts are spent; the last failure is raised.
        avoid: workers counted as already tried (a migration's dead decode)."""
        attempts = Attempts(tried=set(avoid))
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
        if self.routing is not None:
            call.route = self.routing.route(body)
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
                    skip: Callable[[StreamEvent], bool] | None = None, progress: StreamProgress | None = None) -> None:
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
                if progress is not None:
                    progress.observe(event)
                out.append(event.encode_with_id(client_id))
            # A clean end read together with [DONE] closes the client's stream in the same write.
            last = finished and leg.ended
            if out or last:
                await self.write(response, b"".join(out), last)
        if not finished:
            raise UpstreamFailure(leg.worker, "stream", f"{leg.worker.role} stream ended without [DONE]")
        await self.write(response, b"", last=True)  # no-op if the last write already ended the stream

    def migrates(self) -> bool:
        return self.routing is not None and self.routing.migration_limit > 0 and self.protocol.migrates

    async def relay_to_end(self, call: Call, response: EventStreamResponse, leg: Leg, client_id: str,
                           first: StreamEvent) -> None:
        """relay() the rest of a decode stream whose first event the client has; if the decode's connection breaks,
        carry the stream to a new pair (protocol.reopen) with the prompt and the tokens so far, up to
        --migration-limit times, with the same id and no token repeated or lost (diproxy/cache_routing/
        migration.py gives the semantics and the limits)."""
        if not self.migrates():
            await self.relay(response, leg, client_id)
            return
        assert self.routing is not None
        if refusal(call.body) is not None:
            try:
                await self.relay(response, leg, client_id)
            except UpstreamFailure as failure:
                if failure.kind in MIGRATING_KINDS and not failure.forwarded:
                    self.routing.migrations.inc("refused")
                raise
            return
        progress = StreamProgress()
        progress.observe(first)
        dead: list[Worker] = []
        current, own = leg, None  # own: a continuation leg this method opened, and must close
        try:
            while True:
                try:
                    await self.relay(response, current, client_id, progress=progress)
                    return
                except UpstreamFailure as failure:
                    if failure.kind not in MIGRATING_KINDS or failure.forwarded:
                        raise
                    cont = plan(call.body, call.path, progress.text, progress.tokens, len(dead),
                                self.routing.migration_limit)
                    if cont is None:
                        self.routing.migrations.inc("refused")
                        raise
                    dead.append(failure.worker)
                    log.warning("decode %s died after %d tokens; migrating the stream (%d of at most %d)",
                                failure.worker.address, progress.tokens, cont.attempt, self.routing.migration_limit)
                    sub = Call(call.request, cont.body, time.monotonic(), time.monotonic()
                               + self.settings.pair_wait_timeout, phase=call.phase)
                    sub.route = self.routing.route(cont.body)
                    try:
                        new_leg, new_first = await self.protocol.reopen(self, sub, tuple(dead))
                    except (UpstreamFailure, ClientFacingError) as exc:
                        self.routing.migrations.inc("failed")
                        raise failure from exc
                    self.routing.migrations.inc("ok")
                    self.record_failure(failure)
                    if own is not None:
                        own[0].close()
                        own[1].in_flight -= 1
                    own = (new_leg, new_leg.worker)
                    new_leg.worker.in_flight += 1  # attempt() let go of it when the leg opened
                    current = new_leg
                    progress.continuing(cont.drop_role)
                    if new_first.is_done:
                        await self.write(response, new_first.encode(), last=True)
                        return
                    progress.observe(new_first)
                    await self.write(response, new_first.encode_with_id(client_id))
        finally:
            if own is not None:
                own[0].close()
                own[1].in_flight -= 1

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
