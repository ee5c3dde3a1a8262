"""Engine `nixl` (the default): vLLM's NixlConnector, on Trainium (the vLLM Neuron plugin's `vllm serve`, KV over NIXL's
LIBFABRIC backend on EFA) and on GPUs (AWS's vLLM DLC, KV over the backend the catalog gives the type:
LIBFABRIC with GPUDirect RDMA over EFA on p5/p5en, UCX on g6). One module, two accelerators: what differs comes from
the catalog (model/catalog.py InstanceType.accelerator, nixl_backend) and the image catalog, never from a type's name.

GPU sources: vllm-project/vllm docs/features/nixl_connector_usage.md (`vllm serve ... --kv-transfer-config
'{"kv_connector":"NixlConnector","kv_role":"kv_both"}'`, VLLM_NIXL_SIDE_CHANNEL_PORT per instance, UCX the default
transport) and tests/v1/kv_connector/nixl_integration/ (the toy proxy's prefill-then-decode flow).

Sources (aws-neuron/aws-neuron-sdk at v2.32.0, `vllm-neuron/docs/`):
- tutorials/tutorial-di-1p1d-xpyd.md: "DI is supported on Trn2 and Trn3" (L71-73); the env block with the
  compile/ready/execute timeouts 2400/1800/1200 s (L105-114); `NeuronNixlConnector` "required for GPT-OSS because
  the generic NixlConnector does not include Neuron's sliding-window transfer alignment" (L180-181).
- design/vllm/disaggregated-inference.md L127-149: upstream `NixlConnector` for standard TP topologies, hybrid TP
  (different prefill and decode TP) included; `NeuronNixlConnector` for DCP and sliding-window models.
- model-recipes/llama-3.md, tutorials/tutorial-llama3-70b.md: the Llama 3.3 70B shapes (TP 16,
  max-num-batched-tokens 8192, block-size 128, optimization-level 2, neuron_config buckets) and their constraints:
  "`num_batched_tokens_buckets` ... The last entry must equal `--max-num-batched-tokens`";
  "`kv_segment_size_buckets` must stay divisible by `block_size`"; "Neuron defaults `block_size` to 32" (L138-139).
- guides/features-guide.md: "The worker rejects `mxfp4` on Trn2".
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from model import catalog, naming
from model.proxies import DISTACK
from model.engines.base import Engine
from model.node_contract import WORKER, key
from model.problems import Problem

if TYPE_CHECKING:
    from model.config import DeploymentConfig

NIXL_CONNECTOR = "NixlConnector"
NEURON_NIXL_CONNECTOR = "NeuronNixlConnector"
# Sliding-window models that need NeuronNixlConnector (tutorial L180-181: GPT-OSS).
SLIDING_WINDOW_MODELS = re.compile(r"gpt-oss", re.IGNORECASE)
# "Neuron defaults `block_size` to 32" (tutorial-llama3-70b.md L138-139).
NEURON_DEFAULT_BLOCK_SIZE = 32
# The tutorial's prefill side-channel port; endpoint INDEX listens from base + SIDE_CHANNEL_STRIDE x INDEX.
SIDE_CHANNEL_BASE_PORT = 5559
# Colocated endpoints' side channels, 100 ports apart as the tutorial's 5559 (prefill) and 5659 (decode)
# (aws-neuron-sdk vllm-neuron/docs/tutorials/tutorial-di-1p1d-xpyd.md@v2.32.0 L148, L197, L501-502). An endpoint may
# hold up to TP ports from its base: vLLM's NixlConnector has listened once per TP rank, on
# VLLM_NIXL_SIDE_CHANNEL_PORT + dp_rank x tp_size + tp_rank (NixlConnectorWorker._nixl_handshake_listener binding
# `base_port + tp_rank`, the layout upstream vLLM had up to about 0.11; UNVERIFIED at the v0.11.0 tag itself), and
# once per engine since the handshake moved to the scheduler: `VLLM_NIXL_SIDE_CHANNEL_PORT +
# parallel_config.data_parallel_rank` (vllm-project/vllm vllm/distributed/kv_transfer/kv_connector/v1/
# nixl_connector.py@002a1057e9ae, NixlConnectorScheduler.__init__ and _nixl_handshake_listener). Endpoints spaced by
# base + INDEX collided from TP 2 on (gpu-dev: endpoint 0's rank 1 on endpoint 1's rank 0); 100 apart they do not
# while TP <= 100, and the rules check every port an endpoint may hold (_side_channel).
SIDE_CHANNEL_STRIDE = 100


class NeuronConfig(BaseModel):
    """`--additional-config '{"neuron_config": {...}}'` of vllm-neuron. The bucket lists are checked against the
    recipe's constraints; any other key (e.g. fp8_packed_kv, quantization) is passed through unchanged."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kv_segment_size_buckets: tuple[int, ...] | None = Field(
        default=None, min_length=1, description="Each entry divisible by block_size (recipe constraint).")
    num_batched_tokens_buckets: tuple[int, ...] | None = Field(
        default=None, min_length=1, description="The last entry must equal nixl.max_num_batched_tokens.")
    num_seqs_buckets: tuple[int, ...] | None = Field(
        default=None, min_length=1, description="Batch-size buckets to compile, e.g. [8] with max_num_seqs 8 (recipe).")

    def as_json(self) -> str:
        """Compact JSON, keys in the order written (declared keys first)."""
        return json.dumps(self.model_dump(exclude_none=True), separators=(",", ":"))


class NixlSettings(BaseModel):
    """Settings of engine nixl (`vllm serve` of the vLLM Neuron plugin); empty values leave vLLM's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kv_connector: Literal["NixlConnector", "NeuronNixlConnector"] | None = Field(
        default=None, description="Default by model: NeuronNixlConnector for sliding-window models (gpt-oss), "
                                  "NixlConnector for dense ones such as Llama.")
    side_channel_base_port: int = Field(
        default=SIDE_CHANNEL_BASE_PORT, ge=1024, le=65000,
        description="VLLM_NIXL_SIDE_CHANNEL_PORT of endpoint 0; endpoint INDEX uses this + 100 x INDEX (its TP ranks "
                    "may take the next TP ports).")
    max_num_batched_tokens: int | None = Field(default=None, ge=1, description="--max-num-batched-tokens.")
    block_size: int | None = Field(default=None, ge=1, le=4096,
                                   description="--block-size (KV cache block, tokens). Neuron's default: 32.")
    optimization_level: Literal[0, 1, 2, 3] | None = Field(default=None, description="--optimization-level.")
    neuron_config: NeuronConfig | None = Field(default=None, description="--additional-config's neuron_config.")
    compile_timeout_seconds: int = Field(default=2400, ge=60, description="VLLM_NEURON_COMPILATION_TIMEOUT.")
    ready_timeout_seconds: int = Field(default=1800, ge=60, description="VLLM_ENGINE_READY_TIMEOUT_S.")
    execute_model_timeout_seconds: int = Field(default=1200, ge=60,
                                               description="VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS.")


def kv_connector(config: DeploymentConfig) -> str:
    """The connector both roles use: as set, else by model on Neuron (sliding window -> NeuronNixlConnector), else
    the upstream NixlConnector (GPUs need no Neuron alignment)."""
    if config.nixl.kv_connector is not None:
        return config.nixl.kv_connector
    neuron = config.accelerator == catalog.NEURON
    return NEURON_NIXL_CONNECTOR if neuron and SLIDING_WINDOW_MODELS.search(config.model.id) else NIXL_CONNECTOR


# Settings only the vLLM Neuron plugin reads: refused on GPU fleets, where upstream vLLM would not see them.
NEURON_ONLY_SETTINGS = ("neuron_config", "optimization_level", "compile_timeout_seconds")


def _optional(value: Any) -> str:
    return "" if value is None else str(value)


class Nixl(Engine):
    """vLLM Neuron plugin + upstream NIXL connectors (the supported Neuron DI path)."""

    name = "nixl"
    description = ("vLLM's NixlConnector: on Trainium the vLLM Neuron plugin (`vllm serve`, NixlConnector / "
                   "NeuronNixlConnector over NIXL LIBFABRIC on EFA), on GPUs upstream vLLM (NIXL LIBFABRIC with "
                   "GPUDirect RDMA on p5/p5en, UCX on g6); DiStack's registrar and proxy")
    status = "supported (Neuron 2.31+); GPU: synthesized and tested, not yet run on hardware"
    instance_families = ("trn2", "trn3", "p5", "p5en", "g6")
    proxies = (DISTACK.name,)
    settings_key = "nixl"
    settings_model = NixlSettings
    worker_keys = tuple(key(name, type_, "userdata/engines/nixl.sh", doc, nodes=(WORKER,), optional=optional)
                        for name, type_, doc, optional in (
        ("DI_KV_CONNECTOR", "text", "NixlConnector or NeuronNixlConnector", False),
        ("DI_NIXL_SIDE_CHANNEL_BASE_PORT", "int", "endpoint 0's VLLM_NIXL_SIDE_CHANNEL_PORT", False),
        ("DI_NIXL_SIDE_CHANNEL_STRIDE", "int", "ports between endpoints' side channels", False),
        ("DI_MAX_NUM_BATCHED_TOKENS", "int", "--max-num-batched-tokens", True),
        ("DI_BLOCK_SIZE", "int", "--block-size", True),
        ("DI_OPTIMIZATION_LEVEL", "int", "--optimization-level", True),
        ("DI_NEURON_CONFIG", "json", "--additional-config's neuron_config", True),
        ("DI_COMPILE_TIMEOUT_SECONDS", "int", "VLLM_NEURON_COMPILATION_TIMEOUT", False),
        ("DI_READY_TIMEOUT_SECONDS", "int", "VLLM_ENGINE_READY_TIMEOUT_S", False),
        ("DI_EXECUTE_MODEL_TIMEOUT_SECONDS", "int", "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", False)))

    def check(self, config: DeploymentConfig) -> Iterator[Problem]:
        settings = config.nixl
        if SLIDING_WINDOW_MODELS.search(config.model.id) and settings.kv_connector == NIXL_CONNECTOR:
            yield Problem("nixl.kv_connector", f"{config.model.id} uses sliding-window attention, which the generic "
                                               "NixlConnector does not align for Neuron",
                          f"set kv_connector: {NEURON_NIXL_CONNECTOR} or remove it (the default for this model)")
        if config.accelerator == catalog.GPU:
            yield from _gpu_settings(config)
        yield from _buckets(settings)
        yield from _side_channel(config)
        quantization = (settings.neuron_config.model_extra or {}).get("quantization") if settings.neuron_config else None
        trn2 = sorted(n for n, f in config.fleets.items()
                      if f.instance_type in catalog.WORKER_TYPES and catalog.WORKER_TYPES[f.instance_type].family == "trn2")
        if quantization == "mxfp4" and trn2:
            yield Problem("nixl.neuron_config.quantization", f"vllm-neuron rejects mxfp4 on Trn2 (fleet {trn2[0]})",
                          "remove quantization (gpt-oss runs in BF16 on Trn2) or use a Trn3 instance")

    def worker_values(self, config: DeploymentConfig, fleet_name: str) -> dict[str, str]:
        settings = config.nixl
        return {
            "DI_KV_CONNECTOR": kv_connector(config),
            "DI_NIXL_SIDE_CHANNEL_BASE_PORT": str(settings.side_channel_base_port),
            "DI_NIXL_SIDE_CHANNEL_STRIDE": str(SIDE_CHANNEL_STRIDE),
            "DI_MAX_NUM_BATCHED_TOKENS": _optional(settings.max_num_batched_tokens),
            "DI_BLOCK_SIZE": _optional(settings.block_size),
            "DI_OPTIMIZATION_LEVEL": _optional(settings.optimization_level),
            "DI_NEURON_CONFIG": settings.neuron_config.as_json() if settings.neuron_config else "",
            "DI_COMPILE_TIMEOUT_SECONDS": str(settings.compile_timeout_seconds),
            "DI_READY_TIMEOUT_SECONDS": str(settings.ready_timeout_seconds),
            "DI_EXECUTE_MODEL_TIMEOUT_SECONDS": str(settings.execute_model_timeout_seconds),
        }

    def summary(self, config: DeploymentConfig) -> list[str]:
        settings = config.nixl
        if config.mode == "disaggregated":
            backends = "/".join(sorted({catalog.WORKER_TYPES[f.instance_type].nixl_backend
                                        for f in config.fleets.values()}))
            transfer = (f"{kv_connector(config)} over NIXL {backends}, side-channel ports "
                        f"{settings.side_channel_base_port} + {SIDE_CHANNEL_STRIDE} x endpoint")
        else:
            transfer = "vllm serve without KV transfer (standard mode)"
        shapes = "  ".join(f"{key} {value}" for key, value in (
            ("max_num_batched_tokens", settings.max_num_batched_tokens), ("block_size", settings.block_size),
            ("optimization_level", settings.optimization_level)) if value is not None)
        lines = [f"  nixl: {transfer}" + (f"; {shapes}" if shapes else "")]
        if settings.neuron_config:
            lines.append(f"        neuron_config {settings.neuron_config.as_json()}")
        if config.accelerator == catalog.NEURON:
            lines.append(f"        timeouts: compile {settings.compile_timeout_seconds} s, ready "
                         f"{settings.ready_timeout_seconds} s, execute {settings.execute_model_timeout_seconds} s")
        return lines


def _gpu_settings(config: DeploymentConfig) -> Iterator[Problem]:
    settings = config.nixl
    if settings.kv_connector == NEURON_NIXL_CONNECTOR:
        yield Problem("nixl.kv_connector", "NeuronNixlConnector is the vLLM Neuron plugin's; upstream vLLM on GPUs has "
                                           "only NixlConnector", "set kv_connector: NixlConnector or remove it")
    for key in NEURON_ONLY_SETTINGS:
        if key in settings.model_fields_set:
            yield Problem(f"nixl.{key}", f"{key} is a setting of the vLLM Neuron plugin; upstream vLLM on GPU fleets "
                                         "does not read it", f"remove nixl.{key}")


def _buckets(settings: NixlSettings) -> Iterator[Problem]:
    neuron = settings.neuron_config
    if neuron is None:
        return
    at = "nixl.neuron_config"
    if neuron.num_batched_tokens_buckets and neuron.num_batched_tokens_buckets[-1] != settings.max_num_batched_tokens:
        last = neuron.num_batched_tokens_buckets[-1]
        if settings.max_num_batched_tokens is None:
            yield Problem(f"{at}.num_batched_tokens_buckets", "the last bucket must equal max_num_batched_tokens, "
                                                              "which is not set",
                          f"set nixl.max_num_batched_tokens: {last}")
        else:
            yield Problem(f"{at}.num_batched_tokens_buckets",
                          f"the last bucket {last} must equal max_num_batched_tokens {settings.max_num_batched_tokens}",
                          f"end the list with {settings.max_num_batched_tokens}, or set max_num_batched_tokens: {last}")
    block = settings.block_size or NEURON_DEFAULT_BLOCK_SIZE
    odd = [size for size in neuron.kv_segment_size_buckets or () if size % block]
    if odd:
        yield Problem(f"{at}.kv_segment_size_buckets",
                      f"{', '.join(map(str, odd))} not divisible by block_size {block}"
                      f"{'' if settings.block_size else ' (Neuron default)'}",
                      f"use multiples of {block}, e.g. {max(block, odd[0] // block * block)}")


def side_channel_ports(base: int, index: int, tensor_parallel: int) -> range:
    """Every port endpoint INDEX's side channel may listen on: one per TP rank from its own base (see
    SIDE_CHANNEL_STRIDE)."""
    start = base + SIDE_CHANNEL_STRIDE * index
    return range(start, start + tensor_parallel)


def _side_channel(config: DeploymentConfig) -> Iterator[Problem]:
    base = config.nixl.side_channel_base_port
    for name, fleet in config.fleets.items():
        endpoints = fleet.resolved_endpoints
        taken = {ep.port: f"endpoint {ep.index}'s API port" for ep in endpoints}
        taken.update({port: f"the {what} port" for port, what in naming.RESERVED_WORKER_PORTS.items()})
        for ep in endpoints:
            channel = side_channel_ports(base, ep.index, fleet.tensor_parallel)
            clash = next((port for port in channel if port in taken), None)
            if clash is not None or channel.stop - 1 > 65535:
                what = taken[clash] if clash is not None else "past the last port, 65535"
                yield Problem("nixl.side_channel_base_port",
                              f"side-channel ports {channel.start}-{channel.stop - 1} of fleet {name}'s endpoint "
                              f"{ep.index} (base + {SIDE_CHANNEL_STRIDE} x {ep.index}, one per TP rank) include "
                              f"{clash if clash is not None else channel.stop - 1}, {what}",
                              f"move side_channel_base_port (default {SIDE_CHANNEL_BASE_PORT}) clear of the API ports")
                return
            taken.update({port: f"endpoint {ep.index}'s side-channel port" for port in channel})


ENGINE = Nixl()
