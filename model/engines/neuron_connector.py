"""Engine `neuron-connector` (legacy, seed 000): NeuronConnector + etcd + neuron-proxy-server in the 0.9.1 images.

The path of the legacy Neuron DI tutorial (aws-neuron-sdk libraries/nxd-inference/tutorials/
disaggregated-inference-tutorial.rst; DiStack seed 000): vLLM's V0 fork runs
`python3 -m vllm.entrypoints.openai.api_server --kv-transfer-config {"kv_connector":"NeuronConnector",
"kv_buffer_size":...,"etcd":...}`, workers register themselves in etcd, and the image's neuron-proxy-server
pairs them. Neuron has not supported it since 2.28; its images are Ubuntu 22.04, whose DLAMI is frozen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from pydantic import BaseModel, ConfigDict, Field

from model import catalog, images
from model.proxies import DISTACK, NEURON
from model.engines.base import Engine
from model.node_contract import WORKER, key
from model.problems import Problem

if TYPE_CHECKING:
    from model.config import DeploymentConfig, FleetConfig

# Host memory left for the OS, Docker and weight loading when sizing NeuronConnector's host KV buffers.
KV_HOST_MEMORY_SHARE = 0.8


class NeuronConnectorSettings(BaseModel):
    """Settings of engine neuron-connector (the `--kv-transfer-config` of the tutorial's api_server)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kv_buffer_size: float = Field(default=2e11, gt=0,
                                  description="NeuronConnector kv_buffer_size: each endpoint's host KV buffer, bytes "
                                              "(seed 000: 2e11). Formerly model.kv_buffer_size, which still loads.")


class NeuronConnector(Engine):
    """The legacy engine of the Neuron DI tutorial."""

    name = "neuron-connector"
    self_registers = True
    description = ("legacy: vLLM V0 fork's NeuronConnector, etcd registration by vLLM itself, the image's "
                   "neuron-proxy-server (or DiStack's proxy)")
    status = "legacy (unsupported by Neuron since 2.28; reproduces seed 000)"
    # The tutorial: "This tutorial works with trn2.48xlarge and trn1.32xlarge instances."
    instance_families = ("trn1", "trn2")
    proxies = (NEURON.name, DISTACK.name)
    settings_key = "neuron_connector"
    settings_model = NeuronConnectorSettings
    moved_settings = {"model.kv_buffer_size": "kv_buffer_size"}
    # vLLM V0's name for the KV-cache gauge (model/observability/upstream.py).
    kv_cache_metric = "vllm:gpu_cache_usage_perc"
    # One NxDI process per server, servers side by side: each reads the whole checkpoint at its own pace.
    weights_load = "per-server"
    worker_keys = (key("DI_KV_BUFFER_SIZE", "number", "userdata/engines/neuron-connector.sh",
                       "NeuronConnector's kv_buffer_size, bytes", nodes=(WORKER,)),)

    @property
    def default_image(self) -> str:
        """The tag the legacy DI tutorial runs (seed 000), though the DLC README lists 0.9.1 only as sdk2.25.0
        and sdk2.26.1: reproducing the seed is what this engine is kept for."""
        return f"{images.REPOSITORY}:0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04"

    def check(self, config: DeploymentConfig) -> Iterator[Problem]:
        if config.mode != "disaggregated":
            return
        yield from _same_tp(config)
        for name, fleet in config.fleets.items():
            yield from _kv_buffers(config, name, fleet)

    def worker_values(self, config: DeploymentConfig, fleet_name: str) -> dict[str, str]:
        return {"DI_KV_BUFFER_SIZE": f"{self.settings(config).kv_buffer_size:g}"}

    def summary(self, config: DeploymentConfig) -> list[str]:
        if config.mode != "disaggregated":
            return ["  neuron-connector: legacy api_server without KV transfer (standard mode)"]
        return [f"  neuron-connector: NeuronConnector, workers register in etcd themselves; "
                f"kv_buffer_size {self.settings(config).kv_buffer_size:g} bytes per endpoint"]


def _same_tp(config: DeploymentConfig) -> Iterator[Problem]:
    roles: dict[str, set[int]] = {"prefill": set(), "decode": set()}
    for fleet in config.fleets.values():
        for ep in fleet.resolved_endpoints:
            if ep.role in roles:
                roles[ep.role].add(fleet.tensor_parallel)
    if roles["prefill"] and roles["decode"] and len(roles["prefill"] | roles["decode"]) > 1:
        yield Problem("fleets", f"prefill TP {sorted(roles['prefill'])} and decode TP {sorted(roles['decode'])} "
                                "differ; NeuronConnector moves KV shards rank to rank",
                      "use the same tensor_parallel in every prefill and decode fleet (engine nixl allows "
                      "different ones)")


def _kv_buffers(config: DeploymentConfig, name: str, fleet: FleetConfig) -> Iterator[Problem]:
    itype = catalog.WORKER_TYPES.get(fleet.instance_type)
    if itype is None or not itype.efa:
        return  # reported by the shared instance-type rules
    size = ENGINE.settings(config).kv_buffer_size
    buffers = len(fleet.resolved_endpoints)
    need_gib = buffers * size / catalog.GIB
    budget_gib = itype.memory_gib * KV_HOST_MEMORY_SHARE
    if need_gib > budget_gib:
        yield Problem(_kv_buffer_path(config),
                      f"{buffers} x {size:.3g} bytes = {need_gib:.0f} GiB of KV buffers on one "
                      f"{itype.name} in fleet {name}, over {KV_HOST_MEMORY_SHARE:.0%} of its "
                      f"{itype.memory_gib} GiB host memory",
                      f"lower kv_buffer_size to at most {budget_gib / buffers * catalog.GIB:.3g}")


def _kv_buffer_path(config: DeploymentConfig) -> str:
    """Where the file states kv_buffer_size: the engine's section, or the old model.kv_buffer_size."""
    in_section = "kv_buffer_size" in config.neuron_connector.model_fields_set
    in_model = "kv_buffer_size" in config.model.model_fields_set
    return "model.kv_buffer_size" if in_model and not in_section else "neuron_connector.kv_buffer_size"


ENGINE = NeuronConnector()
