"""What every KV-transfer engine module provides to the config layer (`model/engines/<name>.py`).

An engine picks the worker's server family and how KV moves between prefill and decode. The config layer asks
it for its settings section, rules, node.env and proxy.env values (with their declarations in the node contract),
default image and proxy, metric names, how its weights load, and summary lines; nothing outside `model/engines/`
branches on an engine's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Mapping

from pydantic import BaseModel

from model import catalog, images
from model.node_contract import Key
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
    # Top-level config section holding the engine's own settings, and its model (None: it has none); the config
    # builds one section per engine from the registry (model/config.py).
    settings_key: ClassVar[str | None] = None
    settings_model: ClassVar[type[BaseModel] | None] = None
    # Settings that moved into the section from elsewhere: old dotted path -> field of the section. The old path still
    # loads (with a deprecation warning) unless the section sets the field too.
    moved_settings: ClassVar[Mapping[str, str]] = {}
    # The vLLM KV-cache usage gauge the engine's image exports: vLLM renamed it in V1 (model/observability/upstream.py).
    kv_cache_metric: ClassVar[str] = "vllm:kv_cache_usage_perc"
    # How one Neuron worker's endpoints load their weights into HBM (model/serving_time.py): "shared", every endpoint a
    # server sharing the instance's load rate; "per-server", each server reading the whole checkpoint at its own pace.
    weights_load: ClassVar[Literal["shared", "per-server"]] = "shared"
    # The node contract's keys the engine adds (model/node_contract.py): to each worker's node.env, and to the control
    # host's proxy.env (the proxy's own options, diproxy/protocols/<engine>).
    worker_keys: ClassVar[tuple[Key, ...]] = ()
    proxy_keys: ClassVar[tuple[Key, ...]] = ()
    # PYTHONHASHSEED every node of a deployment sets (None: the engine needs none). LMCache hashes KV chunks with
    # Python's hash(), so prefill and decode must agree on the seed.
    python_hash_seed: ClassVar[str | None] = None
    # True when the engine's server writes its own registry keys in etcd (NeuronConnector), over plain HTTP with no
    # credentials: the deployment's etcd then keeps its plain client port (model/control_plane.py etcd_secured).
    self_registers: ClassVar[bool] = False
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

    def settings(self, config: DeploymentConfig) -> Any:
        """The engine's settings section as the config states it, with any moved setting written at its old path
        filled in (None when the engine has no settings)."""
        if self.settings_key is None:
            return None
        section = getattr(config, self.settings_key)
        moved = {name: value for old, name in self.moved_settings.items()
                 if name not in section.model_fields_set and (value := set_value(config, old)) is not None}
        return section.model_copy(update=moved) if moved else section

    def check(self, config: DeploymentConfig) -> Iterator[Problem]:
        """The engine's own rules (the shared ones live in model/rules.py)."""
        return iter(())

    def worker_values(self, config: DeploymentConfig, fleet_name: str) -> dict[str, str]:
        """The engine's node.env variables for one worker fleet (names in the engine contract)."""
        return {}

    def proxy_values(self, config: DeploymentConfig) -> dict[str, str]:
        """The engine's options in DiStack's proxy.env (names in proxy_keys): DIPROXY_<FLAG> sets the proxy's --flag,
        which the engine's protocol declares (diproxy/protocols/<engine>)."""
        return {}

    def summary(self, config: DeploymentConfig) -> list[str]:
        """Lines for the synth summary, after the image line."""
        return []


def set_value(config: BaseModel, dotted: str) -> Any:
    """The value at a dotted path of the config when the file set it there, else None."""
    node: Any = config
    for name in dotted.split("."):
        if not isinstance(node, BaseModel) or name not in node.model_fields_set:
            return None
        node = getattr(node, name)
    return node
