"""How the proxy's aiohttp server runs, shared by the command line and the loopback harness so tests exercise the
server exactly as deployed."""

from __future__ import annotations

from typing import Any

# handler_cancellation: when a client disconnects, aiohttp cancels the request's handler (off by default since
# aiohttp 3.7; https://docs.aiohttp.org/en/stable/web_advanced.html#peer-disconnection). Without it a client that
# leaves before the first byte still has its prefill run and its decode started; with it the cancellation reaches
# the upstream calls, which close their connections to the workers, and vLLM aborts a request whose connection
# closed. No access log: the proxy's own metrics and logs say what happened.
RUNNER_OPTIONS: dict[str, Any] = {"access_log": None, "handler_cancellation": True}
