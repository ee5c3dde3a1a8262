"""What every KV-transfer engine module provides to the config layer (`stacks/engines/<name>.py`).

An engine picks the worker's server family and how KV moves between prefill and decode. The config layer asks
it for its rules, its node.env values, its default image and proxy, and its summary lines; nothing outside
`stacks/engines/` branches on an engine's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Iterator

from stacks import images
from stacks.problems import Problem

if TYPE_CHECKING:
    from stacks.config import DeploymentConfig


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

    @property
    def default_image(self) -> str:
        """The newest catalog image that carries this engine's server."""
        return images.for_engine(self.name)[0].uri

    def check(self, config: DeploymentConfig) -> Iterator[Problem]:
        """The engine's own rules (the shared ones live in stacks/rules.py)."""
        return iter(())

    def worker_values(self, config: DeploymentConfig, fleet_name: str) -> dict[str, str]:
        """The engine's node.env variables for one worker fleet (names in the engine contract)."""
        return {}

    def summary(self, config: DeploymentConfig) -> list[str]:
        """Lines for the synth summary, after the image line."""
        return []
