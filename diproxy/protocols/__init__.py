"""Protocol modules, one per engine (what the proxy says to that engine's prefill and decode workers, and the options,
side services and metrics the engine adds to the proxy), plus the standard (non-disaggregated) relay. MODULES is the
one switch: adding an engine means adding its module (or package) here and a line in MODULES; the proxy's settings,
app and metrics name no engine."""

from __future__ import annotations

import importlib

from diproxy.protocols.base import EngineProtocol
from diproxy.protocols.standard import StandardProtocol

# The one switch: a line per engine, naming its module (or package) here, which exports PROTOCOL.
MODULES = (
    "nixl",
    "neuron_connector",
    "lmcache",
)
ENGINES: dict[str, type[EngineProtocol]] = {
    protocol.name: protocol for protocol in (importlib.import_module(f"{__name__}.{module}").PROTOCOL
                                             for module in MODULES)}
DEFAULT_ENGINE = "nixl"


def protocol_for(mode: str, engine: str, options: object = None) -> EngineProtocol:
    """The protocol a proxy speaks: the engine's in di mode (with the engine's options), the plain relay in standard
    mode (any engine)."""
    if mode == "standard":
        return StandardProtocol()
    return ENGINES[engine](options)
