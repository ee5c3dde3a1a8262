"""The per-deployment values each node receives in `/etc/di/node.env`, derived from the config alone
plus the deploy-time references (addresses, bucket, log groups) the stack hands in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from model import catalog, control_plane, image_cache, naming, node_contract, routing_config
from model.config import DeploymentConfig
from model.node_contract import CONTROL, NODE_ENV, PROXY_ENV, WORKER


@dataclass(frozen=True)
class DeploymentRefs:
    """Values known only at deploy time (CDK tokens at synth)."""

    stack_name: str
    control_address: str
    bucket_name: str
    node_log_group: str
    container_log_group: str
    # s3:// URL of the zipped `userdata/` tree (a CDK asset) that every node unpacks into /opt/di.
    scripts_url: str = ""
    proxy_package_url: str = ""
    # s3:// URL of the proxy's wheelhouse (model/wheelhouse.py), installed without an index.
    proxy_wheelhouse_url: str = ""
    # The deployment's private ECR registry (ACCOUNT.dkr.ecr.REGION.amazonaws.com), whose pull-through cache rules
    # serve the control host's images (model/image_cache.py); empty: the upstream registries themselves.
    ecr_registry: str = ""
    # The etcd trust's secrets (stacks/components/etcd_trust.py), when etcd is secured (model/control_plane.py).
    etcd_ca_secret: str = ""
    etcd_client_secret: str = ""


# Pinned etcd release (official image); the seeds' flags are in userdata/di-run.
# https://etcd.io/docs/v3.5/op-guide/container/
# Pinned by digest as well as tag: docker then pulls exactly this manifest and refuses anything else, so a moved tag
# changes nothing and a wrong digest fails the control host's boot at the pull, naming the image. UNVERIFIED: etcd's
# release notes give no image digest; this one is the value another project pins for the same tag
# (hakopod/hakopod, vitessEtcdImage), not read from quay.io. Check it with
# `docker buildx imagetools inspect quay.io/coreos/etcd:v3.5.17` before relying on it (docs/security.md).
ETCD_IMAGE = "quay.io/coreos/etcd:v3.5.17@sha256:a055da833a7c013b836ed0822e8ec1f99b059658be255ad8d0fcd31b635ae3d6"
# The control host pulls it through the deployment's ECR pull-through cache (model/image_cache.py), under the same
# tag and digest: this constant stays the one place of the digest, and node.env names both the cached reference
# (DI_ETCD_IMAGE) and this upstream one (DI_ETCD_UPSTREAM_IMAGE, for the message of a failed pull).
# Free space a worker's NVMe must offer for weights plus compiled artifacts (bf16: 2 bytes per parameter,
# with room for the compiled NEFFs and a sharded checkpoint).
MIN_DATA_GB_FLOOR = 100


def common_values(config: DeploymentConfig, refs: DeploymentRefs) -> dict[str, str]:
    """What every node needs: who it belongs to, where artifacts and logs go, what to run."""
    model = config.model
    return {
        "DI_DEPLOYMENT": config.name,
        "DI_STACK": refs.stack_name,
        "DI_REGION": config.region,
        "DI_MODE": config.mode,
        "DI_ENGINE": config.engine,
        "DI_PROXY": config.proxy,
        "DI_IMAGE": config.image,
        "DI_MODEL_ID": model.id,
        "DI_MODEL_SOURCE": model.source,
        "DI_MAX_MODEL_LEN": str(model.max_model_len),
        "DI_MAX_NUM_SEQS": str(model.max_num_seqs),
        "DI_BUCKET": refs.bucket_name,
        "DI_LOG_GROUP_NODES": refs.node_log_group,
        "DI_LOG_GROUP_CONTAINERS": refs.container_log_group,
        "DI_ETCD": f"{refs.control_address}:{naming.ETCD_CLIENT_PORT}",
        "DI_PROXY_PORT": str(naming.PROXY_PORT),
        "DI_SCRIPTS_URL": refs.scripts_url,
        "DI_ETCD_TLS": "1" if control_plane.etcd_secured(config) else "0",
        "DI_ETCD_CLIENT_SECRET": refs.etcd_client_secret if control_plane.etcd_secured(config) else "",
    }


def worker_values(config: DeploymentConfig, fleet_name: str, refs: DeploymentRefs, *,
                  signal_resource: str = "") -> dict[str, str]:
    """A worker's node.env: its fleet, endpoints (role:cores:port) and the hardware it must find at boot, as the node
    contract declares them (model/node_contract.py).

    ``signal_resource`` is the logical ID of the fleet's Auto Scaling group, which awaits the boot signal."""
    fleet = config.fleets[fleet_name]
    itype = catalog.WORKER_TYPES[fleet.instance_type]
    endpoints = " ".join(f"{ep.role}:{ep.cores}:{ep.port}" for ep in fleet.resolved_endpoints)
    engine = config.engine_module
    return node_contract.checked(WORKER, NODE_ENV, {
        **common_values(config, refs),
        "DI_ROLE": fleet.role,
        "DI_FLEET": fleet_name,
        "DI_TENSOR_PARALLEL": str(fleet.tensor_parallel),
        # Only workers download the model; no control-host script reads the token (stacks/di_stack.py grants it
        # to the worker role alone).
        "DI_HF_TOKEN_SECRET": config.model.hf_token_secret or "",
        # What DI_ENDPOINTS' ranges index: logical NeuronCores (neuron) or GPU indices (gpu); the Neuron-only and
        # GPU-only values are empty on the other accelerator.
        "DI_ACCELERATOR": itype.accelerator,
        "DI_LNC": str(fleet.lnc or itype.default_lnc) if itype.neuron else "",
        # 1 where the type has the LNC setting at all (model/catalog.py InstanceType.lnc_applies): the node then
        # states DI_LNC to the runtime and compiler; facts about the type come from the catalog, never from its name.
        "DI_LNC_APPLIES": "1" if itype.lnc_applies else "0",
        "DI_ENDPOINTS": endpoints,
        "DI_EXPECTED_NEURON_DEVICES": str(itype.neuron_devices) if itype.neuron else "",
        "DI_EXPECTED_GPUS": "" if itype.neuron else str(itype.gpus),
        "DI_EXPECTED_EFA_INTERFACES": str(itype.efa_interfaces),
        # NIXL's backend on this type (model/catalog.py InstanceType.nixl_backend), for every engine that uses NIXL.
        "DI_NIXL_BACKEND": itype.nixl_backend,
        # The CRT S3 client's target bandwidth on this type (model/catalog.py), empty for the CLI's default.
        "DI_S3_TARGET_BANDWIDTH": itype.s3_target_bandwidth,
        # The same on every node of the deployment where the engine hashes KV with Python's hash() (lmcache).
        "DI_PYTHONHASHSEED": config.engine_module.python_hash_seed or "",
        "DI_MIN_DATA_GB": str(min_data_gb(config)),
        "DI_SIGNAL_RESOURCE": signal_resource,
        # The lifecycle hooks on the fleet's group (stacks/components/worker_fleet.py) and how long a drain may wait.
        "DI_LAUNCH_HOOK": naming.LAUNCH_HOOK,
        "DI_TERMINATION_HOOK": naming.TERMINATION_HOOK,
        "DI_DRAIN_TIMEOUT_SECONDS": str(config.drain.timeout_seconds),
        # The engine's own variables (model/engines/<engine>.py), e.g. DI_KV_CONNECTOR or DI_KV_BUFFER_SIZE.
        **engine.worker_values(config, fleet_name),
    }, engine.worker_keys)


def min_data_gb(config: DeploymentConfig) -> int:
    """Local NVMe a worker needs: three times the bf16 weights (weights, sharded checkpoint, NEFFs)."""
    billions = config.model.parameters_billion or catalog.KNOWN_MODEL_PARAMETERS_B.get(config.model.id, 0)
    return max(MIN_DATA_GB_FLOOR, int(billions * 2 * 3))


def control_images(config: DeploymentConfig) -> tuple[str, ...]:
    """The upstream images the control host pulls at boot: etcd, and the legacy proxy's image (proxy: neuron runs
    neuron-proxy-server from DI_IMAGE). Each one an ECR pull-through cache rule can mirror."""
    images = [ETCD_IMAGE]
    if not config.proxy_kind.distack and image_cache.upstream_of(config.image) is not None:
        images.append(config.image)
    return tuple(images)


def _through_cache(image: str, config: DeploymentConfig, refs: DeploymentRefs) -> str:
    return image_cache.cached(image, refs.ecr_registry, config.name) if refs.ecr_registry else image


def control_values(config: DeploymentConfig, refs: DeploymentRefs, *, network_interface_id: str = "",
                   etcd_volume_id: str = "", signal_resource: str = "",
                   members: Sequence[tuple[str, str, str]] = (), api_key_secret: str | None = None) -> dict[str, str]:
    """A control host's node.env: the interface and volume it takes over at boot (with several control hosts, every
    member's slot, which it claims one of: model/control_plane.py), which proxy it runs and its API key's secret.

    ``members`` are every control-plane member's (interface, etcd volume, address) in member order; without them, one
    host with NETWORK_INTERFACE_ID, ETCD_VOLUME_ID and the deployment's control address. ``api_key_secret`` names a
    key the stack generated, which wins over the config's."""
    members = tuple(members) or ((network_interface_id, etcd_volume_id, refs.control_address),)
    interface, volume, address = members[0]
    return node_contract.checked(CONTROL, NODE_ENV, {
        **common_values(config, refs),
        "DI_ROLE": naming.ROLE_CONTROL,
        "DI_FLEET": naming.ROLE_CONTROL,
        "DI_CONTROL_ADDRESS": address,
        "DI_CONTROL_ENI": interface,
        "DI_ETCD_VOLUME": volume,
        "DI_ETCD_IMAGE": _through_cache(ETCD_IMAGE, config, refs),
        "DI_ETCD_UPSTREAM_IMAGE": ETCD_IMAGE,
        "DI_ETCD_PEER_PORT": str(naming.ETCD_PEER_PORT),
        "DI_ETCD_CA_SECRET": refs.etcd_ca_secret if control_plane.etcd_trust_needed(config) else "",
        "DI_ETCD_PEER_TLS": "1" if control_plane.etcd_peers_secured(config) else "0",
        # What workers dial (refs.control_address: the load balancer's name, or the one host's address).
        "DI_ETCD_SERVER_NAME": refs.control_address,
        "DI_SIGNAL_RESOURCE": signal_resource,
        # The control hosts complete their launch hook once etcd and the proxy serve (components/control_host.py).
        "DI_LAUNCH_HOOK": naming.LAUNCH_HOOK,
        # The proxy's systemd units, the serving one first (model/proxies.py), for control.sh, di-status, di-restart.
        "DI_PROXY_UNITS": " ".join(config.proxy_kind.units),
        "DI_PROXY_PACKAGE_URL": refs.proxy_package_url,
        "DI_PROXY_WHEELHOUSE_URL": refs.proxy_wheelhouse_url,
        # The legacy proxy's image through the cache: the control host's DI_IMAGE (workers keep the upstream one).
        **({"DI_IMAGE": _through_cache(config.image, config, refs), "DI_UPSTREAM_IMAGE": config.image}
           if config.image in control_images(config) else {"DI_UPSTREAM_IMAGE": ""}),
        "DI_PROXY_API_KEY_SECRET": api_key_secret or config.proxy_api_key_secret or "",
        # Several members: each one's slot, and this host's own etcd member on loopback.
        **control_plane.control_plane_values(len(members), list(members)),
    }, ())


# Registered workers the proxy takes, per endpoint the fleets may run at their ceiling: a replacement registers
# while the worker it replaces may still be draining, so twice as many, and never fewer than MIN_WORKERS.
WORKERS_PER_ENDPOINT = 2
MIN_WORKERS = 16


def max_workers(config: DeploymentConfig) -> int:
    """How many registered workers the proxy takes: every fleet at its ceiling (max_count), each endpoint counted."""
    endpoints = sum((fleet.max_count or fleet.count) * len(fleet.resolved_endpoints) for fleet in config.fleets.values())
    return max(MIN_WORKERS, WORKERS_PER_ENDPOINT * endpoints)


def etcd_members(control_env: Mapping[str, str]) -> str:
    """The etcd members the proxy reads: this host's own (node.env DI_ETCD) first, then every member's fixed address
    (DI_CONTROL_SLOTS), so the proxy keeps its registry while its own member is down or rejoining."""
    own = control_env["DI_ETCD"]
    slots = control_env.get("DI_CONTROL_SLOTS", "").split()
    others = [f"{slot.split(',')[2]}:{naming.ETCD_CLIENT_PORT}" for slot in slots]
    return ",".join([own, *others])


def proxy_values(config: DeploymentConfig, control_env: Mapping[str, str],
                 worker_networks: Sequence[str] | None = None) -> dict[str, str] | None:
    """The control host's proxy.env, the settings of DiStack's proxy and its metrics shipper, from the deployment and
    the control host's own node.env values (None when the deployment runs another proxy). The proxy reads
    DIPROXY_<FLAG> as its --flag (diproxy/config.py), the shipper DIPROXY_CLOUDWATCH_<FLAG> (diproxy/shipper/
    settings.py); the engine adds its own options (model/engines/<engine>.py proxy_values).

    ``worker_networks`` are the CIDRs of the subnet(s) the workers are in, as the stack created them; None: the VPC
    the config names (network.vpc_cidr), for a subnet the stack imports without its CIDR."""
    if not config.runs_distack_proxy:
        return None
    engine = config.engine_module
    plane = config.control_plane
    networks = tuple(worker_networks) if worker_networks else (config.network.vpc_cidr,)
    values = {
        # Standard mode: every endpoint registered under /workers/ is a standalone one, balanced behind one URL.
        "DIPROXY_MODE": "standard" if config.mode == "standard" else "di",
        "DIPROXY_ENGINE": config.engine,
        # The registry: this host's member, as its own node scripts reach it, then every member.
        "DIPROXY_ETCD": etcd_members(control_env),
        "DIPROXY_PORT": control_env["DI_PROXY_PORT"],
        "DIPROXY_AWS_REGION": control_env["DI_REGION"],
        # The *name* of the clients' API key secret: the proxy reads the key itself at start.
        "DIPROXY_API_KEY_SECRET": control_env["DI_PROXY_API_KEY_SECRET"],
        # The bounds (diproxy/request_checks.py, admission.py, worker_policy.py): the model's context; n of 1 behind
        # prefill/decode pairs (diproxy/config.py DI_MAX_N_REASON), else as many sequences as an endpoint serves.
        "DIPROXY_MAX_MODEL_LEN": str(config.model.max_model_len),
        "DIPROXY_MAX_N": str(config.model.max_num_seqs) if config.mode == "standard" else "1",
        "DIPROXY_MAX_IN_FLIGHT": str(plane.max_in_flight),
        "DIPROXY_MAX_IN_FLIGHT_PER_CLIENT": str(plane.max_in_flight_per_client),
        "DIPROXY_WORKER_NETWORKS": ",".join(networks),
        "DIPROXY_MAX_WORKERS": str(max_workers(config)),
        "DIPROXY_CLOUDWATCH_DEPLOYMENT": control_env["DI_DEPLOYMENT"],
        # The namespace the control role may write to (stacks/components/node_role.py allow_metrics).
        "DIPROXY_CLOUDWATCH_NAMESPACE": naming.PROXY_METRICS_NAMESPACE,
        **routing_config.proxy_env(config.routing),
        **engine.proxy_values(config),
    }
    if control_plane.etcd_secured(config):
        values.update(proxy_etcd_values(config.proxy_kind.units[0]))
    return node_contract.checked(CONTROL, PROXY_ENV, values, engine.proxy_keys)


# The etcd user the control hosts create for the proxy, with read access to the registry only
# (userdata/lib/etcd_trust.sh ETCD_PROXY_USER).
ETCD_PROXY_USER = "di-proxy"


def proxy_etcd_values(unit: str) -> dict[str, str]:
    """The proxy's etcd TLS and credentials: the files systemd hands the proxy's dynamic user under
    /run/credentials/UNIT/ (control.sh proxy_etcd_credentials, LoadCredential=;
    https://systemd.io/CREDENTIALS/ names that directory)."""
    directory = f"/run/credentials/{unit}"
    return {
        "DIPROXY_ETCD_CA_FILE": f"{directory}/etcd-ca.pem",
        "DIPROXY_ETCD_CERT_FILE": f"{directory}/etcd-client.pem",
        "DIPROXY_ETCD_KEY_FILE": f"{directory}/etcd-client-key.pem",
        "DIPROXY_ETCD_USER": ETCD_PROXY_USER,
        "DIPROXY_ETCD_PASSWORD_FILE": f"{directory}/etcd-password",
    }
