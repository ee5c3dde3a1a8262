"""The proxies a deployment can run on its control host (`proxy:` in config/NAME.yaml), and what each one implies.

Everything that depends on which proxy runs asks the deployment's `ProxyKind` (DeploymentConfig.proxy_kind): whether
it is DiStack's own (metrics, API key, standard-mode balancing, its package and shipper) and which systemd units
carry it on the control host (node.env's DI_PROXY_UNITS, read by control.sh, di-status and di-restart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class ProxyKind:
    """One proxy: its config name, whether it is DiStack's own, and its systemd units (the serving one first)."""

    name: str
    distack: bool
    units: tuple[str, ...]
    description: str

    @property
    def unit(self) -> str:
        """The unit that serves clients (what `di-restart proxy` restarts)."""
        return self.units[0]


# diproxy/deploy/distack-proxy.service and its metrics shipper, installed from the proxy package.
DISTACK = ProxyKind("distack", True, ("distack-proxy.service", "distack-proxy-shipper.service"),
                    "DiStack's own proxy (diproxy): every engine's protocol, standard mode, API key, metrics")
# userdata/units/di-proxy.service: neuron-proxy-server from the legacy 0.9.1 image (seed 000).
NEURON = ProxyKind("neuron", False, ("di-proxy.service",),
                   "the 0.9.1 image's neuron-proxy-server: NeuronConnector pairs only, no key, no metrics")

KINDS: Mapping[str, ProxyKind] = {kind.name: kind for kind in (NEURON, DISTACK)}
DEFAULT = DISTACK.name
NAMES = tuple(KINDS)


def get(name: str) -> ProxyKind:
    """The proxy called `name` (config validation guarantees it exists)."""
    return KINDS[name]
