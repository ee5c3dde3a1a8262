"""The KV-transfer engines DiStack can deploy, one module each; `engine:` in config/NAME.yaml picks one.

Adding an engine (a GPU one, say) is a new module with an `ENGINE` (a `base.Engine`) and one line in MODULES; the
config key's allowed values, its settings section, the shared rules, node.env and proxy.env, the metric names and the
summary follow from the registry.
"""

from __future__ import annotations

import importlib
from typing import Mapping

from model.engines.base import Engine

# The registry: a line per engine, naming its module here, which exports ENGINE.
MODULES = (
    "nixl",
    "neuron_connector",
    "lmcache",
)
ENGINES: Mapping[str, Engine] = {
    engine.name: engine for engine in (importlib.import_module(f"{__name__}.{module}").ENGINE for module in MODULES)}
NAMES = tuple(ENGINES)
DEFAULT = "nixl"


def get(name: str) -> Engine:
    """The engine called `name` (config validation guarantees it exists)."""
    return ENGINES[name]
