"""The KV-transfer engines DiStack can deploy, one module each; `engine:` in config/NAME.yaml picks one.

Adding an engine (a GPU one, say) is a new module with an `ENGINE` (a `base.Engine`) and one line below; the
config key's allowed values, the shared rules, node.env and the summary follow from the registry.
"""

from __future__ import annotations

from typing import Mapping

from model.engines import lmcache, neuron_connector, nixl
from model.engines.base import Engine

ENGINES: Mapping[str, Engine] = {module.ENGINE.name: module.ENGINE for module in (nixl, neuron_connector, lmcache)}
NAMES = tuple(ENGINES)
DEFAULT = nixl.ENGINE.name


def get(name: str) -> Engine:
    """The engine called `name` (config validation guarantees it exists)."""
    return ENGINES[name]
