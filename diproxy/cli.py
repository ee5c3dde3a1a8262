"""Command line: parse settings, load the API key, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from aiohttp import web

from diproxy.app import build_app
from diproxy.auth import ApiKeyError, load_api_key
from diproxy.config import parse_settings
from diproxy.event_loop import loop_name, new_event_loop
from diproxy.prefix_routing import RoutingSetupError
from diproxy.serving import RUNNER_OPTIONS


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        api_key = load_api_key(settings.api_key_secret, settings.api_key_file, settings.aws_region)
    except ApiKeyError as exc:
        # Refusing to start beats serving without the key the configuration asks for.
        print(f"diproxy: {exc}", file=sys.stderr)
        return 2
    try:
        app = build_app(settings, api_key)
    except RoutingSetupError as exc:
        print(f"diproxy: {exc}", file=sys.stderr)
        return 2
    loop = new_event_loop()
    logging.getLogger("diproxy").info("starting in %s mode, engine %s, on %s:%d (API key %s, %s loop)",
                                      settings.mode, settings.engine, settings.host, settings.port,
                                      "required" if api_key else "not required", loop_name(loop))
    web.run_app(app, host=settings.host, port=settings.port, print=None,
                shutdown_timeout=10, loop=loop, **RUNNER_OPTIONS)
    return 0
