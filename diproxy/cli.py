"""Command line: parse settings, load the API key, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from typing import Sequence

from aiohttp import web

from diproxy.app import build_app
from diproxy.auth import load_api_key
from diproxy.config import parse_settings


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = load_api_key(settings.api_key_secret, settings.api_key_file, settings.aws_region)
    logging.getLogger("diproxy").info("starting in %s mode on %s:%d (API key %s)", settings.mode, settings.host,
                                      settings.port, "required" if api_key else "not required")
    web.run_app(build_app(settings, api_key), host=settings.host, port=settings.port, print=None,
                access_log=None, shutdown_timeout=10)
    return 0
