"""What every KV-transfer engine module provides to the config layer (`model/engines/<name>.py`).

An engine picks the worker's server family and how KV moves between prefill and decode. The config layer asks
it for its rules, its node.env values, its default image and proxy, and its summary lines; nothing outside
`model/engines/` branches on an engine's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Iterator

from model import catalog, images
from model.problems import Problem

if TYPE_CHECKING:
    from model.config import DeploymentConfig


class Engine:
    """Base of one engine: class attributes describe it, methods hold what differs per engine."""

    name: ClassVar[str]
    # One line for the summary and the README's Engines table.
    description: ClassVar[str]
    status: ClassVar[str]
    # Instance families (catalog.InstanceType.family) the engine runs on.
    instance_families: ClassVar[tuple[str, ...]]
    # Proxies that speak the engine's protocol; the first is the default in disaggregated mode.
    proxies: ClassVar[tuple[str, ...]]
    # Top-level config section holding the engine's own settings (None: it has none).
    settings_key: ClassVar[str | None] = None
    # PYTHONHASHSEED every node of a deployment sets (None: the engine needs none). LMCache hashes KV chunks with
    # Python's hash(), so prefill and decode must agree on the seed.
    python_hash_seed: ClassVar[str | None] = None
    # TCP ports on the control host (the proxy) that workers reach for the engine, e.g. lmcache's transfer notices.
    control_ports: ClassVar[tuple[int, ...]] = ()

    @property
    def accelerators(self) -> tuple[str, ...]:
        """The accelerators (catalog.NEURON, catalog.GPU) of the instance families the engine runs on."""
        found = {t.accelerator for t in catalog.WORKER_TYPES.values() if t.family in self.instance_families}
        return tuple(a for a in catalog.ACCELERATORS if a in found)

    @property
    def default_image(self) -> str:
        """The newest catalog image that carries this engine's server, on the engine's first accelerator."""
        return self.default_image_for(self.accelerators[0])

    def default_image_for(self, accelerator: str) -> str:
        """The newest catalog image that carries this engine's server for `accelerator`."""
        return images.for_engine(self.name, accelerator)[0].uri

    def check(self, config: DeploymentConfig) -> Iterator[Problem]:
        """The engine's own rules (the shared ones live in model/rules.py)."""
        return iter(())

    def worker_values(self, config: DeploymentConfig, fleet_name: str) -> dict[str, str]:
        """The engine's node.env variables for one worker fleet (names in the engine contract)."""
        return {}

    def control_values(self, config: DeploymentConfig) -> dict[str, str]:
        """The engine's node.env variables for the control host (its proxy). A name DIPROXY_<FLAG> is one of the
        proxy's settings (diproxy/config.py: --flag defaults to DIPROXY_<FLAG>): the control host hands every such
        value to the proxy as it is (userdata/control.sh write_proxy_env), whatever the engine."""
        return {}

    def summary(self, config: DeploymentConfig) -> list[str]:
        """Lines for the synth summary, after the image line."""
        return []
