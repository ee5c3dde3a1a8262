"""Run the proxy in the current event loop on a free loopback port (tests, rehearsal, benchmark)."""

from __future__ import annotations

from typing import Sequence

from aiohttp import web

from diproxy.app import STATE, ProxyState, build_app
from diproxy.cache_routing.tokenizer import Tokenizer
from diproxy.config import parse_settings
from diproxy.serving import RUNNER_OPTIONS


class RunningProxy:
    def __init__(self, args: Sequence[str], api_key: str | None = None, tokenizer: Tokenizer | None = None) -> None:
        # engine lmcache: the notification socket on a free port too (args may name one).
        self.settings = parse_settings(["--host", "127.0.0.1", "--port", "0", "--lmcache-notify-port", "0", *args],
                                       env={})
        self.app = build_app(self.settings, api_key, tokenizer)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def lmcache_notify(self) -> str | None:
        """HOST:PORT of the LMCache notification socket (engine lmcache, once started), for fake senders."""
        listener = next((service for service in self.state.side_services if service.name == "lmcache-notify"), None)
        return None if listener is None else f"127.0.0.1:{getattr(listener, 'port')}"

    @property
    def state(self) -> ProxyState:
        return self.app[STATE]  # type: ignore[return-value]

    async def start(self) -> "RunningProxy":
        self._runner = web.AppRunner(self.app, **RUNNER_OPTIONS)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "RunningProxy":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
