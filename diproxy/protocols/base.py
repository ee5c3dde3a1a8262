"""What a protocol module provides: the worker roles it needs, how it serves one client request with them, and what its
engine adds to the proxy: options, side services with start/stop hooks, metrics. Retries, timeouts, the shared
metrics, the API key and the pools are the Router's (diproxy/routing.py), shared by all; the proxy's settings and
app name no engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence

from aiohttp import web

if TYPE_CHECKING:
    from diproxy.etcd_gateway import EtcdGateway
    from diproxy.metrics import Metric
    from diproxy.routing import Call, Router
    from diproxy.sse import StreamEvent
    from diproxy.upstream import Leg
    from diproxy.workers import Worker


@dataclass(frozen=True)
class Option:
    """One option of an engine's protocol: --ENGINE-FIELD on the command line, DIPROXY_ENGINE_FIELD in the
    environment (diproxy/config.py adds every engine's), FIELD of the engine's options object."""

    field: str
    kind: type
    default: Any
    help: str
    # What a valid value is, and the error's wording when it is not.
    valid: Callable[[Any], bool] = lambda value: True
    requirement: str = ""


class SideService(Protocol):
    """Something an engine runs beside the proxy for its workers to reach (e.g. LMCache's transfer-done socket):
    start() binds it (a failure stops the proxy's start, before anything else runs), run() serves it as a task,
    close() releases it when the proxy stops."""

    name: str

    def start(self) -> None: ...

    async def run(self) -> None: ...

    def close(self) -> None: ...


class EngineProtocol:
    """One engine's request flow. Subclasses set name, roles and serve(); serve() runs its upstream calls through
    router.attempt(), which picks workers and retries failures before the client's first byte."""

    name: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]
    summary: ClassVar[str]
    # The phases a request goes through, in order (diproxy/load.py), each with the pool role whose healthy endpoints
    # carry it. A request enters the first at arrival; serve() moves it on with router.enter().
    phases: ClassVar[dict[str, str]]

    # The engine's own options (see Option) and the class that holds their values.
    options: ClassVar[tuple[Option, ...]] = ()
    options_type: ClassVar[type | None] = None
    # Whether reopen() can carry a stream whose decode died to a new pair (Router.relay_to_end).
    migrates: ClassVar[bool] = False

    def __init__(self, options: Any = None) -> None:
        self.engine_options = options

    @property
    def metrics(self) -> Sequence["Metric"]:
        """The engine's own metrics, rendered on /metrics after the shared counters."""
        return ()

    def side_services(self, host: str, count_error: Callable[[str], None]) -> Sequence[SideService]:
        """The side services the engine needs on this proxy (on listen address HOST), once per proxy start;
        count_error(kind) adds to diproxy_errors_total."""
        return ()

    async def run_beside(self, gateway: "EtcdGateway | None", etcd_prefix: str) -> None:
        """The engine's own background work while the proxy runs, as one task cancelled at stop (NIXL: publishing
        its pending KV handoffs in the registry the workers read, GATEWAY, under ETCD_PREFIX's parent). None: none."""
        return None

    async def serve(self, router: "Router", call: "Call") -> web.StreamResponse:
        raise NotImplementedError

    async def reopen(self, router: "Router", call: "Call",
                     avoid: tuple["Worker", ...]) -> tuple["Leg", "StreamEvent"]:
        """A migration's continuation (call.body) through the protocol's flow, up to decode's first event, on a
        decode other than avoid where one is usable; only where migrates is True."""
        raise NotImplementedError


def cap_tokens_at_one(body: dict) -> dict:
    """A shallow copy of body that generates one token. vLLM prefers max_completion_tokens over max_tokens for chat:
    left as is, prefill would decode the whole answer; it is set only when present, as both reference proxies do
    (vllm-project/vllm:tests/v1/kv_connector/nixl_integration/toy_proxy_server.py send_request_to_service)."""
    shaped = dict(body)
    shaped["max_tokens"] = 1
    if "max_completion_tokens" in shaped:
        shaped["max_completion_tokens"] = 1
    return shaped
