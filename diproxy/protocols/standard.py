"""Standard mode (no disaggregation, any engine): one standalone worker answers; its bytes are relayed unparsed,
except the first read of a stream, which is checked for an error event so its status reaches the client."""

from __future__ import annotations

import asyncio

from aiohttp import web

from diproxy import load
from diproxy.errors import worker_error
from diproxy.protocols.base import EngineProtocol
from diproxy.routing import Call, EventStreamResponse, Router, new_uid
from diproxy.sse import EventDecoder
from diproxy.upstream import UpstreamFailure
from diproxy.workers import STANDALONE, Worker


class StandardProtocol(EngineProtocol):
    name = "standard"
    roles = (STANDALONE,)
    phases = {load.STANDARD: STANDALONE}
    summary = "one standalone worker per request, bytes relayed as they come"

    async def serve(self, router: Router, call: Call) -> web.StreamResponse:
        return await router.attempt(call, self.roles, lambda workers: self._one(router, call, workers[0]))

    async def _one(self, router: Router, call: Call, worker: Worker) -> web.StreamResponse:
        uid = new_uid()
        client_id = call.client_id(uid)
        leg = router.leg(worker, call.path, call.body, f"cmpl-{uid}")
        settings = router.settings
        try:
            if not call.streaming:
                async with asyncio.timeout(settings.first_token_timeout):
                    upstream = await leg.open()
                raw = await leg.read_body(settings.total_timeout)
                router.first_byte(call)
                return web.Response(status=200, body=raw, content_type=upstream.content_type,
                                    headers={"X-Request-Id": client_id})
            async with asyncio.timeout(settings.first_token_timeout):
                await leg.open()
                chunk = await leg.read_chunk()
            if not chunk:
                raise UpstreamFailure(worker, "stream", "empty answer")
            if b'"error"' in chunk:  # cheap test first: answers rarely hold the word
                decoder = EventDecoder()
                events = decoder.feed(chunk) + decoder.finish()
                error = worker_error(events[0].payload) if events else None
                if error is not None:
                    raise UpstreamFailure.from_worker_error(worker, error)
        except asyncio.TimeoutError as exc:
            leg.close()
            raise UpstreamFailure(worker, "timeout", "no first token in time") from exc
        except UpstreamFailure:
            leg.close()
            raise

        async def body(response: EventStreamResponse) -> None:
            await router.write(response, chunk)
            router.first_byte(call)
            while data := await leg.read_chunk():
                await router.write(response, data)
            await router.write(response, b"", last=True)

        try:
            return await router.stream(call, client_id, body)
        finally:
            leg.close()
