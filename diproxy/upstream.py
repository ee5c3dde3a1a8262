"""One upstream call (a 'leg'): open it with bounded timeouts, read its SSE events or body, classify failures."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from diproxy.errors import WorkerError, worker_error
from diproxy.sse import EventDecoder, StreamEvent
from diproxy.workers import Worker


# Statuses another worker may answer differently: overload and time limits (vLLM answers 503 when it cannot take a
# request, and any 5xx is the worker's own fault). Other 4xx describe the request itself: every worker would refuse it.
_RETRYABLE_CLIENT_STATUSES = (408, 429)


class UpstreamFailure(Exception):
    """An upstream call failed; kind is connect | status | timeout | stream | error (an error object the worker sent
    after a 200, as an SSE event or a JSON body). `error` is the worker's own error, when it sent one."""

    def __init__(self, worker: Worker, kind: str, detail: str, upstream_status: int | None = None,
                 body: bytes | None = None, error: WorkerError | None = None) -> None:
        super().__init__(f"{worker.role} {worker.address}: {kind}: {detail}")
        self.worker = worker
        self.kind = kind
        self.detail = detail
        self.upstream_status = upstream_status
        self.body = body
        self.error = error
        self.forwarded = False  # the worker's error event already went to the client as it was

    @classmethod
    def from_worker_error(cls, worker: Worker, error: WorkerError) -> "UpstreamFailure":
        return cls(worker, "error", f"worker error {error.status}: {error.message}", error.status, error=error)

    @property
    def is_client_error(self) -> bool:
        """The worker rejected the request itself (4xx): another worker would reject it too, so no retry, and the
        client gets the worker's status and error."""
        status = self.upstream_status
        return (self.kind in ("status", "error") and status is not None and 400 <= status < 500
                and status not in _RETRYABLE_CLIENT_STATUSES)

    @property
    def retryable(self) -> bool:
        return not self.is_client_error

    @property
    def client_status(self) -> int:
        if self.kind == "timeout":
            return 504
        # An overloaded worker's 503 stays a 503 (with Retry-After): the client may come back later.
        return 503 if self.upstream_status == 503 else 502

    @property
    def code(self) -> str:
        return "upstream_timeout" if self.kind == "timeout" else f"upstream_{self.kind}"


class IdleTimer:
    """Bounds every wait for upstream bytes by `timeout`, as wrapping each wait in asyncio.timeout would, but with one
    timer per leg that is moved only when it fires. Waits follow each other as fast as tokens arrive, and arming and
    cancelling a timer around every read was a measurable share of the proxy's CPU per request. An expired wait
    fails the body stream with TimeoutError, which wakes the reader; a leg is not read again after a failure."""

    # A timer may fire this much before its due time (the loop's clock and timers have a resolution).
    _TOLERANCE = 0.001

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        self._stream: aiohttp.StreamReader | None = None

    def start_wait(self, stream: aiohttp.StreamReader) -> None:
        self._stream = stream
        self._waiting_since = now = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(now + self._timeout, self._on_timer)

    def end_wait(self) -> None:
        self._waiting_since = None

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _on_timer(self) -> None:
        self._handle = None
        if self._waiting_since is None or self._stream is None:
            return  # not waiting now; the next wait arms the timer again
        due = self._waiting_since + self._timeout
        if self._loop.time() + self._TOLERANCE >= due:
            self._stream.set_exception(asyncio.TimeoutError())
        else:  # the wait it was armed for ended; a later one is still within its time
            self._handle = self._loop.call_at(due, self._on_timer)


class Leg:
    def __init__(self, session: aiohttp.ClientSession, worker: Worker, path: str, body: dict[str, Any],
                 request_id: str, connect_timeout: float, idle_timeout: float,
                 extra_headers: dict[str, str] | None = None) -> None:
        self.session = session
        self.worker = worker
        self.url = worker.base_url + path
        self.body = body
        self.request_id = request_id
        self.idle_timeout = idle_timeout
        self.headers = {"X-Request-Id": request_id, **(extra_headers or {})}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, connect=connect_timeout)
        self.response: aiohttp.ClientResponse | None = None
        self._decoder = EventDecoder()
        self._pending: list[StreamEvent] = []
        self._ended = False
        self._idle = IdleTimer(idle_timeout)

    def _failure(self, exc: BaseException) -> UpstreamFailure:
        if isinstance(exc, UpstreamFailure):
            return exc
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return UpstreamFailure(self.worker, "timeout", "timed out")
        if isinstance(exc, aiohttp.ClientConnectorError) or (self.response is None and isinstance(exc, OSError)):
            return UpstreamFailure(self.worker, "connect", str(exc) or type(exc).__name__)
        return UpstreamFailure(self.worker, "stream", str(exc) or type(exc).__name__)

    async def open(self) -> aiohttp.ClientResponse:
        """Send the request and wait for a 200 status line; any other status becomes UpstreamFailure."""
        try:
            self.response = await self.session.post(self.url, json=self.body, headers=self.headers,
                                                    timeout=self._timeout)
            self.worker.answered()
            if self.response.status != 200:
                body = await self.response.read()
                raise UpstreamFailure(self.worker, "status", f"HTTP {self.response.status}",
                                      self.response.status, body, _error_in(body))
            return self.response
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._failure(exc) from exc

    @property
    def ended(self) -> bool:
        """The upstream body is fully read and every event in it has been handed out or is pending."""
        return self._ended

    async def _read_available(self) -> bytes:
        """Whatever body bytes have arrived (waiting for at least one), b'' at the end; bounded by the idle timeout."""
        assert self.response is not None
        content = self.response.content
        self._idle.start_wait(content)
        try:
            return await content.readany()
        finally:
            self._idle.end_wait()

    async def _read_events(self) -> list[StreamEvent] | None:
        while not self._ended:
            chunk = await self._read_available()
            if not chunk:
                self._ended = True
                events = self._decoder.finish()
            else:
                events = self._decoder.feed(chunk)
                assert self.response is not None
                if self.response.content.at_eof():
                    # The end arrived with the last bytes: say so now, so the relay can close in the same write.
                    self._ended = True
                    events += self._decoder.finish()
            if events:
                return events
        return None

    async def next_events(self) -> list[StreamEvent] | None:
        """Every event already received (waiting for at least one), or None at a clean end of stream."""
        if self._pending:
            events, self._pending = self._pending, []
            return events
        try:
            return await self._read_events()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._failure(exc) from exc

    async def next_event(self) -> StreamEvent | None:
        """The next SSE event, or None at a clean end of stream."""
        if not self._pending:
            events = await self.next_events()
            if events is None:
                return None
            self._pending = events
        return self._pending.pop(0)

    async def read_body(self, timeout: float) -> bytes:
        assert self.response is not None
        try:
            async with asyncio.timeout(timeout):
                return await self.response.read()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._failure(exc) from exc

    async def read_chunk(self) -> bytes:
        """Next raw body bytes (b'' at the end), bounded by the idle timeout."""
        assert self.response is not None
        content = self.response.content
        self._idle.start_wait(content)
        try:
            data, _ = await content.readchunk()
            return data
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._failure(exc) from exc
        finally:
            self._idle.end_wait()

    def close(self) -> None:
        """Drop the connection: the worker sees a disconnect and can abort its generation."""
        self._idle.cancel()
        if self.response is not None and not self.response.closed:
            self.response.close()


def _error_in(body: bytes) -> WorkerError | None:
    try:
        return worker_error(json.loads(body))
    except ValueError:
        return None
