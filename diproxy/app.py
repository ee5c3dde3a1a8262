"""The proxy's aiohttp application: routes, API-key check, background discovery and health tasks."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import web

from diproxy.admission import Admission
from diproxy.auth import ApiKeySource, bearer_matches
from diproxy.config import DI_MAX_N_REASON, Settings, request_body_limit
from diproxy.errors import ClientFacingError, error_response
from diproxy.etcd_access import EtcdAccess
from diproxy.etcd_gateway import EtcdGateway
from diproxy.metrics import ProxyMetrics
from diproxy.cache_routing.tokenizer import Tokenizer
from diproxy.prefix_routing import PrefixRouting
from diproxy.protocols import protocol_for
from diproxy.protocols.base import SideService
from diproxy.registry import EtcdDiscovery, WorkerRegistry, add_static
from diproxy.request_checks import RequestLimits, check, parse_body
from diproxy.routing import Router
from diproxy.worker_policy import WorkerPolicy
from diproxy.workers import make_selector

log = logging.getLogger(__name__)

COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
STATE = web.AppKey("state", object)
# The errors metric's kind for each refusal (None: the refusal's own code, proxy_at_capacity or client_at_capacity).
REFUSAL_KINDS = {400: "bad_request", 413: "request_too_large", 429: None}
# Who may read /metrics without the API key: the metrics shipper beside the proxy, which scrapes 127.0.0.1
# (diproxy/shipper/settings.py --metrics-url). /metrics names every worker's address, so anyone else needs the key,
# and with no key configured nobody else may read it.
LOCAL_SCRAPERS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class ProxyState:
    """Everything one running proxy owns; built on startup, torn down on cleanup."""

    def __init__(self, settings: Settings, api_key: str | None, tokenizer: Tokenizer | None = None) -> None:
        self.settings = settings
        self.keys = ApiKeySource(api_key, settings.api_key_secret, settings.api_key_file, settings.aws_region)
        self.local_scrapers = LOCAL_SCRAPERS
        self.started = time.time()
        self.session: aiohttp.ClientSession | None = None
        self.registry: WorkerRegistry | None = None
        self.discovery: EtcdDiscovery | None = None
        self.router: Router | None = None
        self.protocol = protocol_for(settings.mode, settings.engine, settings.engine_options)
        # Cache-aware routing (raises RoutingSetupError when its settings cannot be served: the proxy refuses to start).
        self.routing = PrefixRouting(settings, tokenizer)
        self.admission = Admission(settings.max_in_flight, settings.max_in_flight_per_client, settings.retry_after)
        self.metrics = ProxyMetrics(self._pool_sizes, self._worker_in_flight, self._worker_backoff,
                                    self.protocol.name, tuple(self.protocol.phases),
                                    engine_metrics=(*self.protocol.metrics, *self.routing.metrics),
                                    in_flight=lambda: self.admission.in_flight)
        self.tasks: list[asyncio.Task] = []
        self.limits = RequestLimits(settings.max_model_len, max_n=settings.max_n,
                                    n_reason=DI_MAX_N_REASON if settings.mode == "di" else "")
        self.worker_policy = WorkerPolicy(settings.worker_networks, settings.max_workers,
                                          on_refused=self.metrics.errors.inc)
        self._reload_key = asyncio.Event()
        self._sighup = False
        # What the engine runs beside the proxy for its workers (diproxy/protocols/base.py SideService).
        self.side_services: list[SideService] = []

    @property
    def api_key(self) -> str | None:
        return self.keys.key

    def has_key(self, request: web.Request) -> bool:
        """Whether REQUEST may pass the key check: no key is configured, or it carries the current one."""
        key = self.api_key
        return not key or bearer_matches(request.headers.get("Authorization"), key)

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
        self.routing.sync(self.registry.workers())

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
            gateway = EtcdAccess.of_settings(s).gateway(self.session, request_timeout=max(s.connect_timeout, 2.0))
            self.discovery = EtcdDiscovery(self.registry, gateway, s.etcd_prefix, s.resync_interval,
                                           s.etcd_retry_interval, standard=s.mode == "standard",
                                           policy=self.worker_policy)
            self.tasks.append(asyncio.create_task(self.discovery.run(), name="etcd-discovery"))
        self.tasks.append(asyncio.create_task(self.registry.run_health_checks(), name="health-checks"))
        self.tasks += [asyncio.create_task(service.run(), name=service.name) for service in self.side_services]
        self.tasks.append(asyncio.create_task(self.protocol.run_beside(gateway, s.etcd_prefix), name="engine"))
        self.router = Router(s, self.registry, self.session, self.metrics, make_selector(s.selection), self.protocol,
                             self.routing)
        if self.keys.reloadable:
            self.tasks.append(asyncio.create_task(self._reload_api_key(), name="api-key-reload"))
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_key.set)
                self._sighup = True

    async def _reload_api_key(self) -> None:
        """Re-read the key every --api-key-reload-interval, and at once on SIGHUP (`systemctl reload`, or
        `kill -HUP`): a rotated secret takes effect without a restart, so no stream is dropped."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reload_key.wait(), self.settings.api_key_reload_interval)
            self._reload_key.clear()
            await asyncio.to_thread(self.keys.reload)

    async def stop(self) -> None:
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for service in self.side_services:
            service.close()
        await self.routing.close()
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
    if request.path.startswith("/v1/") and not state.has_key(request):
        state.metrics.errors.inc("unauthorized")
        return error_response(401, "missing or wrong API key", "authentication_error", "invalid_api_key")
    try:
        return await handler(request)
    except ClientFacingError as exc:
        return exc.response()


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, or a 413 in the API's error shape (aiohttp's own is plain text) once it passes the limit."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ClientFacingError(413, f"request body is larger than {limit} bytes, the limit for this model's context "
                                "length; send fewer or shorter prompts per request", "invalid_request_error",
                                "request_too_large") from None


def _client(request: web.Request) -> str:
    """Who the per-client cap counts: the connection's peer. The load balancer preserves client addresses on the
    proxies' target group (stacks/components/edge.py), so this is the client, never a forwarded header anyone may
    write."""
    return request.remote or "unknown"


async def completions(request: web.Request) -> web.StreamResponse:
    state: ProxyState = request.app[STATE]
    assert state.router is not None
    start = time.monotonic()
    status = 500
    try:
        # Refused before the body is read: a client over its cap costs no memory and no parsing.
        with state.admission.admit(_client(request)):
            body = parse_body(await _read_body(request, request.app[BODY_LIMIT]), request.charset)
            check(request.path, body, state.limits)
            response = await state.router.handle(request, body)
        status = response.status
        return response
    except ClientFacingError as exc:
        status = exc.status
        if status in REFUSAL_KINDS:
            state.metrics.errors.inc(REFUSAL_KINDS[status] or exc.code)
        raise
    finally:
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
    if not _local_scraper(state, request.remote) and not (state.api_key and state.has_key(request)):
        state.metrics.errors.inc("metrics_refused")
        return error_response(403, "/metrics names the workers' addresses: send the API key, or scrape it on the "
                              "proxy's host (127.0.0.1)", "permission_error", "metrics_refused")
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


def _local_scraper(state: ProxyState, remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:  # a Unix socket has no address
        return False
    return any(address in network for network in state.local_scrapers)


BODY_LIMIT = web.AppKey("body_limit", int)


def build_app(settings: Settings, api_key: str | None = None, tokenizer: Tokenizer | None = None) -> web.Application:
    limit = request_body_limit(settings)
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=limit,
                          handler_args={"tcp_keepalive": True})
    app[BODY_LIMIT] = limit
    app[STATE] = ProxyState(settings, api_key, tokenizer)
    app.cleanup_ctx.append(_lifecycle)
    for path in COMPLETION_PATHS:
        app.router.add_post(path, completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
