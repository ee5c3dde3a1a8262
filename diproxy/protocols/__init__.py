"""Protocol modules, one per engine (what the proxy says to that engine's prefill and decode workers), plus the
standard (non-disaggregated) relay. Adding an engine means adding a module here and a line in ENGINES."""

from __future__ import annotations

from diproxy.protocols.base import EngineProtocol
from diproxy.protocols.lmcache import LMCacheProtocol
from diproxy.protocols.neuron_connector import NeuronConnectorProtocol
from diproxy.protocols.nixl import NixlProtocol
from diproxy.protocols.standard import StandardProtocol

ENGINES: dict[str, type[EngineProtocol]] = {
    NixlProtocol.name: NixlProtocol,
    NeuronConnectorProtocol.name: NeuronConnectorProtocol,
    LMCacheProtocol.name: LMCacheProtocol,
}
DEFAULT_ENGINE = NixlProtocol.name


def protocol_for(mode: str, engine: str) -> EngineProtocol:
    """The protocol a proxy speaks: the engine's in di mode, the plain relay in standard mode (any engine)."""
    if mode == "standard":
        return StandardProtocol()
    return ENGINES[engine]()
