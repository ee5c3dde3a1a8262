"""What a protocol module provides: the worker roles it needs and how it serves one client request with them.
Retries, timeouts, metrics, the API key and the pools are the Router's (diproxy/routing.py), shared by all."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from aiohttp import web

if TYPE_CHECKING:
    from diproxy.routing import Call, Router


class EngineProtocol:
    """One engine's request flow. Subclasses set name, roles and serve(); serve() runs its upstream calls through
    router.attempt(), which picks workers and retries failures before the client's first byte."""

    name: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]
    summary: ClassVar[str]
    # The phases a request goes through, in order (diproxy/load.py), each with the pool role whose healthy endpoints
    # carry it. A request enters the first at arrival; serve() moves it on with router.enter().
    phases: ClassVar[dict[str, str]]

    async def serve(self, router: "Router", call: "Call") -> web.StreamResponse:
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
