"""The proxy's aiohttp application: routes, API-key check, background discovery and health tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import web

from diproxy.auth import bearer_matches
from diproxy.config import Settings
from diproxy.errors import ClientFacingError, error_response
from diproxy.etcd_access import etcd_access
from diproxy.etcd_gateway import EtcdGateway
from diproxy.metrics import ProxyMetrics
from diproxy.protocols import protocol_for
from diproxy.protocols.base import SideService
from diproxy.registry import EtcdDiscovery, WorkerRegistry, add_static
from diproxy.routing import Router
from diproxy.workers import make_selector

log = logging.getLogger(__name__)

COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
STATE = web.AppKey("state", object)


class ProxyState:
    """Everything one running proxy owns; built on startup, torn down on cleanup."""

    def __init__(self, settings: Settings, api_key: str | None) -> None:
        self.settings = settings
        self.api_key = api_key
        self.started = time.time()
        self.session: aiohttp.ClientSession | None = None
        self.registry: WorkerRegistry | None = None
        self.discovery: EtcdDiscovery | None = None
        self.router: Router | None = None
        self.protocol = protocol_for(settings.mode, settings.engine, settings.engine_options)
        self.metrics = ProxyMetrics(self._pool_sizes, self._worker_in_flight, self._worker_backoff,
                                    self.protocol.name, tuple(self.protocol.phases),
                                    engine_metrics=self.protocol.metrics)
        self.tasks: list[asyncio.Task] = []
        # What the engine runs beside the proxy for its workers (diproxy/protocols/base.py SideService).
        self.side_services: list[SideService] = []

    def _pool_sizes(self) -> dict[tuple[str, ...], float]:
        sizes: dict[tuple[str, ...], float] = {}
        if self.registry is not None:
            for worker in self.registry.workers():
                state = "healthy" if worker.healthy else "unhealthy"
                sizes[(worker.role, state)] = sizes.get((worker.role, state), 0) + 1
        return sizes

    def _pools_changed(self) -> None:
        """A worker joined the usable pool or left it: the per-role load's endpoint counts follow."""
        assert self.registry is not None
        self.metrics.load.set_endpoints({phase: len(self.registry.usable(role))
                                         for phase, role in self.protocol.phases.items()})

    def _worker_in_flight(self) -> dict[tuple[str, ...], float]:
        if self.registry is None:
            return {}
        return {(w.role, w.address): float(w.in_flight) for w in self.registry.workers()}

    def _worker_backoff(self) -> dict[tuple[str, ...], float]:
        if self.registry is None:
            return {}
        now = asyncio.get_running_loop().time()
        return {(w.role, w.address): round(w.backoff_until - now, 3) for w in self.registry.workers()
                if w.backoff_until > now}

    async def start(self) -> None:
        s = self.settings
        # Bound first: a taken port fails the start before anything else runs.
        for service in self.protocol.side_services(s.host, self.metrics.errors.inc):
            service.start()
            self.side_services.append(service)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self.registry = WorkerRegistry(self.session, s.health_interval, s.health_timeout, self._pools_changed)
        if s.mode == "standard":
            add_static(self.registry, ((e.host, e.port) for e in s.endpoints))
        gateway: EtcdGateway | None = None
        if s.etcd is not None:
            gateway = EtcdGateway(self.session, s.etcd.host, s.etcd.port, request_timeout=max(s.connect_timeout, 2.0),
                                  **etcd_access(s))
            self.discovery = EtcdDiscovery(self.registry, gateway, s.etcd_prefix, s.resync_interval,
                                           s.etcd_retry_interval, standard=s.mode == "standard")
            self.tasks.append(asyncio.create_task(self.discovery.run(), name="etcd-discovery"))
        self.tasks.append(asyncio.create_task(self.registry.run_health_checks(), name="health-checks"))
        self.tasks += [asyncio.create_task(service.run(), name=service.name) for service in self.side_services]
        self.tasks.append(asyncio.create_task(self.protocol.run_beside(gateway, s.etcd_prefix), name="engine"))
        self.router = Router(s, self.registry, self.session, self.metrics, make_selector(s.selection), self.protocol)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for service in self.side_services:
            service.close()
        if self.registry is not None:
            await self.registry.close()
        if self.session is not None:
            await self.session.close()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state: ProxyState = app[STATE]
    await state.start()
    try:
        yield
    finally:
        await state.stop()


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    state: ProxyState = request.app[STATE]
    if state.api_key and request.path.startswith("/v1/") and not bearer_matches(
            request.headers.get("Authorization"), state.api_key):
        state.metrics.errors.inc("unauthorized")
        return error_response(401, "missing or wrong API key", "authentication_error", "invalid_api_key")
    try:
        return await handler(request)
    except ClientFacingError as exc:
        return exc.response()


async def completions(request: web.Request) -> web.StreamResponse:
    state: ProxyState = request.app[STATE]
    assert state.router is not None
    start = time.monotonic()
    state.metrics.in_flight += 1
    status = 500
    try:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            state.metrics.errors.inc("bad_request")
            raise ClientFacingError(400, "request body must be a JSON object", "invalid_request_error",
                                    "invalid_json")
        response = await state.router.handle(request, body)
        status = response.status
        return response
    except ClientFacingError as exc:
        status = exc.status
        raise
    finally:
        state.metrics.in_flight -= 1
        state.metrics.requests.inc(request.path, str(status))
        state.metrics.latency.observe(time.monotonic() - start, request.path)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    state: ProxyState = request.app[STATE]
    assert state.registry is not None and state.router is not None
    pools = {role: len(state.registry.usable(role)) for role in state.router.roles()}
    ok = state.router.has_capacity()
    return web.json_response({"ready": ok, "mode": state.settings.mode, "protocol": state.protocol.name,
                              "usable": pools}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    state: ProxyState = request.app[STATE]
    return web.Response(text=state.metrics.render(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def models(request: web.Request) -> web.StreamResponse:
    """Forward /v1/models to one usable worker, so OpenAI clients and benchmarks can discover the model."""
    state: ProxyState = request.app[STATE]
    assert state.registry is not None and state.router is not None and state.session is not None
    candidates = [w for role in state.router.roles() for w in state.registry.usable(role)]
    if not candidates:
        raise ClientFacingError(503, "no worker available", "service_unavailable", "no_worker_available",
                                {"Retry-After": str(state.settings.retry_after)})
    timeout = aiohttp.ClientTimeout(total=state.settings.connect_timeout + state.settings.health_timeout)
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        async with state.session.get(candidates[0].base_url + "/v1/models", timeout=timeout) as reply:
            return web.Response(status=reply.status, body=await reply.read(), content_type="application/json")
    raise ClientFacingError(502, "worker did not answer /v1/models", "upstream_error", "upstream_connect")


def build_app(settings: Settings, api_key: str | None = None) -> web.Application:
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=settings.max_request_bytes,
                          handler_args={"tcp_keepalive": True})
    app[STATE] = ProxyState(settings, api_key)
    app.cleanup_ctx.append(_lifecycle)
    for path in COMPLETION_PATHS:
        app.router.add_post(path, completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
