"""Engine `lmcache` (seed 004): vLLM with LMCacheConnectorV1, KV sent from prefill to decode over NIXL (LMCache's PD
mode), LMCache's image, GPU fleets only.

Sources:
- seed 004 (/work/shared/seeds/004_*.txt, LMCache's XpYd example): `vllm serve MODEL --port P --enforce-eager
  --kv-transfer-config '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_producer"|"kv_consumer",
  "kv_connector_extra_config":{"discard_partial_chunks":false,"lmcache_rpc_port":NAME}}'` per endpoint, each on its
  own GPU (CUDA_VISIBLE_DEVICES), LMCACHE_CONFIG_FILE per role with `nixl_buffer_size: 1073741824 # 1GB` and
  `nixl_buffer_device: "cuda"`, and "ensure all processes use the same PYTHONHASHSEED ... export PYTHONHASHSEED=0".
- LMCache/LMCache examples/disagg_prefill/xpyd/ (README@41219a0c and the proxy it runs): with several decoders the
  proxy names the decoder's receiver in each prefill request (`kv_transfer_params.disagg_spec`), and senders report
  finished transfers to the proxy (pd_proxy_host/pd_proxy_port). The receiver ports follow the decode endpoint's HTTP
  port (agreed with the proxy and node in the issue-15 contract): init PORT+1000+100*rank, alloc PORT+2000+100*rank.
- LMCache's default chunk size is 256 tokens (LMCache docs, configuration reference: `chunk_size`, default 256).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from model import naming
from model.proxies import DISTACK
from model.engines.base import Engine
from model.node_contract import CONTROL, WORKER, key
from model.problems import Problem

if TYPE_CHECKING:
    from model.config import DeploymentConfig, FleetConfig

# Receiver ports of a decode endpoint serving on PORT, TP rank r: PORT + offset + stride * r (the proxy's
# --lmcache-init-port-offset / --lmcache-alloc-port-offset / --lmcache-rank-port-stride defaults).
INIT_PORT_OFFSET = 1000
ALLOC_PORT_OFFSET = 2000
RANK_PORT_STRIDE = 100
# Where senders tell the proxy (on the control host) that a transfer to the decoder has completed.
PROXY_NOTIFY_PORT = 7500
# Seed 004: "export PYTHONHASHSEED=0".
PYTHON_HASH_SEED = "0"


class LmcacheSettings(BaseModel):
    """Settings of engine lmcache (LMCache's sender/receiver configuration, generated per endpoint on the node)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_size: int = Field(default=256, ge=16, le=65536, description="LMCache chunk_size, tokens (default 256).")
    nixl_buffer_size: int = Field(default=1073741824, ge=1 << 20,
                                  description="NIXL transfer buffer per endpoint, bytes (seed 004: 1 GiB).")
    nixl_buffer_device: Literal["cuda", "cpu"] = Field(
        default="cuda", description="Where the NIXL buffer lives (seed 004: cuda, the GPU's memory).")


def receiver_ports(port: int, tensor_parallel: int) -> list[int]:
    """Every port a decode endpoint's LMCache receiver listens on: init and alloc per TP rank (each receiver rank
    binds `pd_peer_init_port[tp_rank]` and `pd_peer_alloc_port[tp_rank]`: pd_backend.py@07e07869
    PDConfig.from_cache_engine_config). 100 apart per rank and 1000 from the HTTP port, so endpoints on neighbouring
    ports never share one (_receiver_ports checks it)."""
    return [port + offset + RANK_PORT_STRIDE * rank
            for offset in (INIT_PORT_OFFSET, ALLOC_PORT_OFFSET) for rank in range(tensor_parallel)]


class Lmcache(Engine):
    """LMCache XpYd over NIXL (seed 004)."""

    name = "lmcache"
    description = ("seed 004: vLLM + LMCacheConnectorV1 in LMCache's image, KV from prefill to decode over NIXL "
                   "(LMCache's PD sender/receiver), DiStack's registrar and proxy (prefill max_tokens 1, then decode)")
    status = "GPU only; synthesized and tested, not yet run on hardware"
    instance_families = ("p5", "p5en", "g6")
    proxies = (DISTACK.name,)
    settings_key = "lmcache"
    settings_model = LmcacheSettings
    python_hash_seed = PYTHON_HASH_SEED
    control_ports = (PROXY_NOTIFY_PORT,)
    worker_keys = tuple(key(name, type_, "userdata/engines/lmcache.sh", doc, nodes=(WORKER,)) for name, type_, doc in (
        ("DI_LMCACHE_CHUNK_SIZE", "int", "LMCache chunk_size, tokens"),
        ("DI_LMCACHE_NIXL_BUFFER_SIZE", "int", "NIXL transfer buffer per endpoint, bytes"),
        ("DI_LMCACHE_NIXL_BUFFER_DEVICE", "text", "cuda or cpu"),
        ("DI_LMCACHE_INIT_PORT_OFFSET", "int", "a receiver's init port: decode port + this + stride x rank"),
        ("DI_LMCACHE_ALLOC_PORT_OFFSET", "int", "a receiver's alloc port: decode port + this + stride x rank"),
        ("DI_LMCACHE_RANK_PORT_STRIDE", "int", "ports between a receiver's TP ranks"),
        ("DI_LMCACHE_PROXY_PORT", "int", "where senders report finished transfers (the proxy's notify port)")))
    # The proxy's options of the same contract (diproxy/protocols/lmcache/options.py reads DIPROXY_LMCACHE_*).
    proxy_keys = tuple(key(name, "int", "diproxy/protocols/lmcache/options.py", doc, nodes=(CONTROL,),
                           optional=optional) for name, doc, optional in (
        ("DIPROXY_LMCACHE_INIT_PORT_OFFSET", "the receivers' init port offset, as the workers'", False),
        ("DIPROXY_LMCACHE_ALLOC_PORT_OFFSET", "the receivers' alloc port offset, as the workers'", False),
        ("DIPROXY_LMCACHE_RANK_PORT_STRIDE", "the receivers' rank stride, as the workers'", False),
        ("DIPROXY_LMCACHE_NOTIFY_PORT", "the PULL socket the senders report to", False),
        ("DIPROXY_LMCACHE_DECODE_TP", "the decode TP: receiver ports per decoder and reports per transfer", True)))

    def check(self, config: DeploymentConfig) -> Iterator[Problem]:
        if config.mode != "disaggregated":
            return
        yield from _one_tp(config)
        for name, fleet in config.fleets.items():
            yield from _receiver_ports(config, name, fleet)

    def worker_values(self, config: DeploymentConfig, fleet_name: str) -> dict[str, str]:
        settings = config.lmcache
        return {
            "DI_LMCACHE_CHUNK_SIZE": str(settings.chunk_size),
            "DI_LMCACHE_NIXL_BUFFER_SIZE": str(settings.nixl_buffer_size),
            "DI_LMCACHE_NIXL_BUFFER_DEVICE": settings.nixl_buffer_device,
            **_port_values(),
        }

    def proxy_values(self, config: DeploymentConfig) -> dict[str, str]:
        """The proxy's lmcache options: the decode TP sets how many receiver
        ports it names per decoder and how many transfer-done notices it awaits (one per prefill rank, the same TP:
        _one_tp); the offsets and stride are the workers' (_port_values), the notify port their pd_proxy_port."""
        decode_tps = sorted({f.tensor_parallel for f in config.fleets.values()
                             for ep in f.resolved_endpoints if ep.role == "decode"})
        values = {"DIPROXY_LMCACHE_INIT_PORT_OFFSET": str(INIT_PORT_OFFSET),
                  "DIPROXY_LMCACHE_ALLOC_PORT_OFFSET": str(ALLOC_PORT_OFFSET),
                  "DIPROXY_LMCACHE_RANK_PORT_STRIDE": str(RANK_PORT_STRIDE),
                  "DIPROXY_LMCACHE_NOTIFY_PORT": str(PROXY_NOTIFY_PORT)}
        # Empty without decode endpoints (standard mode, where the proxy relays and reads no engine option).
        values["DIPROXY_LMCACHE_DECODE_TP"] = str(decode_tps[0]) if decode_tps else ""
        return values

    def summary(self, config: DeploymentConfig) -> list[str]:
        settings = config.lmcache
        return [f"  lmcache: LMCacheConnectorV1 over NIXL, chunk {settings.chunk_size} tokens, buffer "
                f"{settings.nixl_buffer_size} bytes on {settings.nixl_buffer_device}; receivers at decode port "
                f"+{INIT_PORT_OFFSET}/+{ALLOC_PORT_OFFSET} (+{RANK_PORT_STRIDE} per rank); PYTHONHASHSEED "
                f"{PYTHON_HASH_SEED}"]


def _one_tp(config: DeploymentConfig) -> Iterator[Problem]:
    """Every prefill and decode endpoint runs one TP degree.

    LMCache's sender picks the receiver port by its own rank, `transfer_spec.receiver_init_port[self.tp_rank]`, and
    every sender rank pushes its own ProxyNotif once its share of the KV is written (LMCache/LMCache
    lmcache/v1/storage_backend/pd_backend.py@07e07869, PDBackend.batched_submit_put_task). Prefill rank r thus
    writes its shard of the KV heads into decode rank r's buffer: a prefill TP above the decode TP indexes past the
    decoder's port list, one below it leaves decode ranks without KV, and shards of different TP degrees do not hold
    the same heads. So the TP is one (the proxy's --lmcache-decode-tp then also counts the notices, one per prefill
    rank), rather than the proxy awaiting a different count of notices that could never describe a working transfer.
    """
    tps: dict[str, int] = {}
    for name, fleet in config.fleets.items():
        if any(ep.role in ("prefill", "decode") for ep in fleet.resolved_endpoints):
            tps[name] = fleet.tensor_parallel
    decode = next((n for n, f in config.fleets.items() if n in tps
                   and any(ep.role == "decode" for ep in f.resolved_endpoints)), None)
    if decode is None:
        return  # no decode endpoint: reported by the role rules
    want = tps[decode]
    for name, tp in tps.items():
        if tp != want:
            yield Problem(f"fleets.{name}.tensor_parallel",
                          f"TP {tp}, but fleet {decode}'s decode endpoints use TP {want}; with engine lmcache each "
                          "prefill rank sends its KV shard to the decode rank of the same number and reports it to "
                          "the proxy, so prefill and decode need the same TP",
                          f"set tensor_parallel: {want} in every fleet (or give fleet {decode} TP {tp})")


def _port_values() -> dict[str, str]:
    return {
        "DI_LMCACHE_INIT_PORT_OFFSET": str(INIT_PORT_OFFSET),
        "DI_LMCACHE_ALLOC_PORT_OFFSET": str(ALLOC_PORT_OFFSET),
        "DI_LMCACHE_RANK_PORT_STRIDE": str(RANK_PORT_STRIDE),
        "DI_LMCACHE_PROXY_PORT": str(PROXY_NOTIFY_PORT),
    }


def _receiver_ports(config: DeploymentConfig, name: str, fleet: FleetConfig) -> Iterator[Problem]:
    endpoints = fleet.resolved_endpoints
    taken = {ep.port: f"endpoint {ep.index}'s API port" for ep in endpoints}
    taken.update({port: f"the {what} port" for port, what in naming.RESERVED_WORKER_PORTS.items()})
    for ep in endpoints:
        if ep.role != "decode":
            continue
        for port in receiver_ports(ep.port, fleet.tensor_parallel):
            if port in taken:
                yield Problem(f"fleets.{name}.endpoints[{ep.index}].port",
                              f"decode endpoint {ep.index}'s LMCache receiver port {port} (its port "
                              f"{ep.port} + {INIT_PORT_OFFSET}/{ALLOC_PORT_OFFSET} + {RANK_PORT_STRIDE} x rank) is "
                              f"{taken[port]}", "give the decode endpoints ports further apart, e.g. 8000 and 8001")
                return
            taken[port] = f"endpoint {ep.index}'s receiver port"


ENGINE = Lmcache()
