"""Static cross-field rules on a parsed DeploymentConfig: every problem with its dotted path and fix.

Only rules that need no AWS call belong here; those that do are `dictl preflight`'s.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterator

from stacks import catalog, naming
from stacks.config import LOG_RETENTION_DAYS, NEURON_DLC, DeploymentConfig, FleetConfig

FLEET_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
# NeuronConnector (etcd discovery) exists only in the legacy vLLM fork shipped in these DLC lines.
NEURON_CONNECTOR_DLC_TAGS = re.compile(r":(0\.9\.1|0\.7\.2)-")
# Host memory left for the OS, Docker and weight loading when sizing the KV buffers.
KV_HOST_MEMORY_SHARE = 0.8


@dataclass(frozen=True)
class Problem:
    """One rule violation: where, what, and how to fix it."""

    path: str
    message: str
    fix: str


def check(config: DeploymentConfig, *, file_stem: str | None = None) -> list[Problem]:
    """Every static rule violation in `config`, in file order where possible."""
    problems: list[Problem] = []
    if file_stem is not None and config.name != file_stem:
        problems.append(Problem("name", f"name is '{config.name}' but the file is {file_stem}.yaml",
                                f"set name: {file_stem} (the file name picks the environment; the name picks the stack)"))
    problems += _region_and_zone(config)
    problems += _network(config)
    problems += _engine(config)
    problems += _proxy(config)
    for fleet_name, fleet in config.fleets.items():
        problems += _fleet(config, fleet_name, fleet)
    problems += _roles(config)
    problems += _placement(config)
    if config.log_retention_days not in LOG_RETENTION_DAYS:
        problems.append(Problem("log_retention_days", f"{config.log_retention_days} is not a CloudWatch retention",
                                f"use one of {', '.join(map(str, LOG_RETENTION_DAYS[:12]))}, ..."))
    return problems


def _region_and_zone(config: DeploymentConfig) -> Iterator[Problem]:
    if not re.fullmatch(re.escape(config.region) + r"[a-z]", config.availability_zone):
        yield Problem("availability_zone", f"'{config.availability_zone}' is not a zone of region {config.region}",
                      f"use a zone name such as {config.region}a (run `dictl preflight` to see which zones offer "
                      "your instance types)")


def _network(config: DeploymentConfig) -> Iterator[Problem]:
    net = config.network
    if (net.vpc_id is None) != (net.subnet_id is None):
        yield Problem("network.subnet_id" if net.vpc_id else "network.vpc_id",
                      "an existing network needs both vpc_id and subnet_id",
                      "set both, or remove both to let DiStack create a VPC")
    if net.existing and net.vpc_endpoints and net.route_table_id is None:
        yield Problem("network.route_table_id", "VPC endpoints in an existing VPC need the subnet's route table",
                      "set network.route_table_id, or vpc_endpoints: false if the VPC already has them")
    if not net.existing and net.route_table_id is not None:
        yield Problem("network.route_table_id", "route_table_id only applies to an existing VPC",
                      "remove it, or also set vpc_id and subnet_id")
    try:
        vpc_cidr = ipaddress.IPv4Network(net.vpc_cidr)
        if not 16 <= vpc_cidr.prefixlen <= 24:
            yield Problem("network.vpc_cidr", f"{net.vpc_cidr} must be between /16 and /24",
                          "use for example 10.42.0.0/16")
    except ValueError as err:
        yield Problem("network.vpc_cidr", f"'{net.vpc_cidr}' is not an IPv4 network ({err})",
                      "use for example 10.42.0.0/16")
    for i, cidr in enumerate(net.allowed_client_cidrs):
        path = f"network.allowed_client_cidrs[{i}]"
        try:
            network = ipaddress.IPv4Network(cidr)
        except ValueError as err:
            yield Problem(path, f"'{cidr}' is not an IPv4 network ({err})", "write it as a.b.c.d/len, e.g. 10.0.0.0/8")
            continue
        if network.prefixlen == 0:
            yield Problem(path, "the proxy must not be open to the whole internet",
                          "list your clients' networks, or leave the list empty and use `dictl tunnel`")
    if config.control_host.private_ip is not None and not net.existing:
        try:
            inside = ipaddress.IPv4Address(config.control_host.private_ip) in ipaddress.IPv4Network(net.vpc_cidr)
        except ValueError:
            inside = True  # reported above
        if not inside:
            yield Problem("control_host.private_ip", f"{config.control_host.private_ip} is outside {net.vpc_cidr}",
                          "pick an address in the private subnet, or remove it to let EC2 choose once")


def _engine(config: DeploymentConfig) -> Iterator[Problem]:
    if config.mode == "disaggregated" and not NEURON_CONNECTOR_DLC_TAGS.search(config.image):
        yield Problem("image", "the neuron-connector engine needs a 0.9.1 (or 0.7.2) Neuron vLLM DLC; "
                               "later tags dropped NeuronConnector",
                      f"use {NEURON_DLC}")
    model = config.model
    if model.source == "huggingface" and model.id.startswith("meta-llama/") and model.hf_token_secret is None:
        yield Problem("model.hf_token_secret", f"{model.id} is gated on Hugging Face and needs a token",
                      "store the token in Secrets Manager and set hf_token_secret to its name, "
                      "or set source: s3 and upload the weights to models/ in the artifacts bucket")


def _proxy(config: DeploymentConfig) -> Iterator[Problem]:
    if config.mode == "standard" and config.proxy != "distack":
        yield Problem("proxy", "neuron-proxy-server only pairs prefill with decode workers; it cannot balance "
                               "standard endpoints", "set proxy: distack, or remove proxy (standard mode's default)")
    elif config.proxy_api_key_secret is not None and config.proxy != "distack":
        yield Problem("proxy_api_key_secret", "neuron-proxy-server checks no API key, so the key would guard nothing",
                      "set proxy: distack, or remove proxy_api_key_secret")


def _fleet(config: DeploymentConfig, fleet_name: str, fleet: FleetConfig) -> Iterator[Problem]:
    at = f"fleets.{fleet_name}"
    if not FLEET_NAME.fullmatch(fleet_name):
        yield Problem(at, f"fleet name '{fleet_name}' must be lowercase letters, digits and '-', at most 16",
                      "rename the fleet, e.g. prefill, decode, prefill-b")
    if fleet.max_count is not None and fleet.max_count < fleet.count:
        yield Problem(f"{at}.max_count", f"max_count {fleet.max_count} is below count {fleet.count}",
                      f"set max_count to {fleet.count} or more, or remove it")
    itype = catalog.WORKER_TYPES.get(fleet.instance_type)
    if itype is None:
        yield Problem(f"{at}.instance_type", f"unknown worker instance type '{fleet.instance_type}'",
                      f"use one of {', '.join(t for t, v in catalog.WORKER_TYPES.items() if v.efa)}")
        return
    if not itype.efa:
        yield Problem(f"{at}.instance_type", f"{itype.name} has no EFA; DI's KV transfer and DiStack's worker "
                                             "network need it, even on one instance",
                      "use trn1.32xlarge, trn1n.32xlarge or trn2.48xlarge")
        return
    if fleet.lnc is not None and fleet.lnc not in itype.supported_lnc:
        yield Problem(f"{at}.lnc", f"{itype.name} does not support LNC={fleet.lnc}",
                      f"use one of {itype.supported_lnc} or remove lnc")
        return
    yield from _endpoints(config, at, fleet, itype)


def _endpoints(config: DeploymentConfig, at: str, fleet: FleetConfig, itype: catalog.InstanceType) -> Iterator[Problem]:
    logical = itype.logical_cores(fleet.lnc)
    lnc = fleet.lnc or itype.default_lnc
    endpoints = fleet.resolved_endpoints
    if fleet.tensor_parallel * len(endpoints) > logical:
        yield Problem(f"{at}.tensor_parallel",
                      f"{len(endpoints)} endpoint(s) x TP {fleet.tensor_parallel} = "
                      f"{len(endpoints) * fleet.tensor_parallel} NeuronCores, but {itype.name} has {logical} "
                      f"(LNC={lnc})",
                      f"lower tensor_parallel to {logical // len(endpoints)} or use fewer endpoints")
        return
    taken: dict[int, int] = {}
    ports: dict[int, int] = {}
    for ep in endpoints:
        where = f"{at}.endpoints[{ep.index}]"
        if ep.core_count != fleet.tensor_parallel:
            yield Problem(f"{where}.cores", f"range {ep.cores} holds {ep.core_count} cores but tensor_parallel is "
                                            f"{fleet.tensor_parallel}",
                          f"give it exactly {fleet.tensor_parallel} cores, e.g. "
                          f"{ep.first_core}-{ep.first_core + fleet.tensor_parallel - 1}")
        elif ep.last_core >= logical:
            yield Problem(f"{where}.cores", f"range {ep.cores} goes past core {logical - 1} of {itype.name} "
                                            f"(LNC={lnc})",
                          f"keep ranges within 0-{logical - 1}")
        else:
            overlap = sorted({taken[c] for c in range(ep.first_core, ep.last_core + 1) if c in taken})
            if overlap:
                yield Problem(f"{where}.cores", f"range {ep.cores} overlaps endpoint {overlap[0]}",
                              "give each endpoint its own cores (NeuronCores cannot be shared between processes)")
            taken.update({c: ep.index for c in range(ep.first_core, ep.last_core + 1)})
        if ep.port in ports:
            yield Problem(f"{where}.port", f"port {ep.port} is also used by endpoint {ports[ep.port]}",
                          "give each endpoint on an instance its own port")
        elif ep.port in naming.RESERVED_WORKER_PORTS:
            yield Problem(f"{where}.port", f"port {ep.port} is the {naming.RESERVED_WORKER_PORTS[ep.port]} port",
                          f"pick another port, e.g. {naming.VLLM_BASE_PORT + ep.index}")
        ports.setdefault(ep.port, ep.index)
        declared_role = fleet.endpoints[ep.index].role if fleet.endpoints else ep.role
        if fleet.role == "colocated" and declared_role not in ("prefill", "decode"):
            yield Problem(f"{where}.role", "endpoints of a colocated fleet need a role",
                          "set role: prefill or role: decode")
        elif fleet.role != "colocated" and fleet.endpoints and declared_role is not None:
            yield Problem(f"{where}.role", f"only colocated fleets set endpoint roles; this fleet is {fleet.role}",
                          "remove role (the fleet's role applies), or make the fleet colocated")
    yield from _memory(config, at, fleet, itype)


def _memory(config: DeploymentConfig, at: str, fleet: FleetConfig, itype: catalog.InstanceType) -> Iterator[Problem]:
    model = config.model
    params_b = model.parameters_billion or catalog.KNOWN_MODEL_PARAMETERS_B.get(model.id)
    if params_b is not None:
        weights_gib = params_b * 1e9 * catalog.DTYPE_BYTES[model.dtype] / catalog.GIB
        hbm_gib = itype.hbm_gib_per_core(fleet.lnc) * fleet.tensor_parallel
        if weights_gib > hbm_gib:
            yield Problem(f"{at}.tensor_parallel",
                          f"{model.id} needs {weights_gib:.0f} GiB for {model.dtype} weights but "
                          f"{fleet.tensor_parallel} cores of {itype.name} hold {hbm_gib:.0f} GiB of HBM",
                          "raise tensor_parallel (fewer endpoints per instance) or use a smaller model or dtype")
    if config.mode == "disaggregated":
        buffers = len(fleet.resolved_endpoints)
        need_gib = buffers * model.kv_buffer_size / catalog.GIB
        budget_gib = itype.memory_gib * KV_HOST_MEMORY_SHARE
        if need_gib > budget_gib:
            yield Problem("model.kv_buffer_size",
                          f"{buffers} x {model.kv_buffer_size:.3g} bytes = {need_gib:.0f} GiB of KV buffers on one "
                          f"{itype.name} in fleet {at.split('.')[-1]}, over {KV_HOST_MEMORY_SHARE:.0%} of its "
                          f"{itype.memory_gib} GiB host memory",
                          f"lower kv_buffer_size to at most {budget_gib / buffers * catalog.GIB:.3g}")


def _roles(config: DeploymentConfig) -> Iterator[Problem]:
    fleets = config.fleets.items()
    if config.mode == "standard":
        for name, fleet in fleets:
            if fleet.role != "standard":
                yield Problem(f"fleets.{name}.role", f"mode standard runs plain vLLM endpoints, not {fleet.role}",
                              "set role: standard, or mode: disaggregated")
        return
    roles: dict[str, list[int]] = {"prefill": [], "decode": []}
    misassigned = False
    for name, fleet in fleets:
        if fleet.role == "standard":
            yield Problem(f"fleets.{name}.role", "standard fleets belong to mode: standard",
                          "use role prefill, decode or colocated, or set mode: standard")
            misassigned = True
            continue
        for ep in fleet.resolved_endpoints:
            if ep.role in roles:
                roles[ep.role].append(fleet.tensor_parallel)
            misassigned |= ep.role not in roles
    for role, tps in roles.items():
        # A role missing only because an endpoint was misassigned is the same mistake, reported above.
        if not tps and not misassigned:
            yield Problem("fleets", f"disaggregated inference needs at least one {role} endpoint",
                          f"add a fleet with role: {role} (or a colocated fleet with a {role} endpoint)")
    if roles["prefill"] and roles["decode"] and set(roles["prefill"]) | set(roles["decode"]) != {roles["prefill"][0]}:
        yield Problem("fleets", f"prefill TP {sorted(set(roles['prefill']))} and decode TP "
                                f"{sorted(set(roles['decode']))} differ; NeuronConnector moves KV shards rank to rank",
                      "use the same tensor_parallel in every prefill and decode fleet")


def _placement(config: DeploymentConfig) -> Iterator[Problem]:
    targeted = [n for n, f in config.fleets.items() if f.capacity.targeted]
    for name, fleet in config.fleets.items():
        cap = fleet.capacity
        if cap.targeted and cap.reservation_id is None:
            yield Problem(f"fleets.{name}.capacity.reservation_id", f"capacity type {cap.type} needs the reservation",
                          "set reservation_id: cr-... (from the console or describe-capacity-reservations)")
        if not cap.targeted and cap.reservation_id is not None:
            yield Problem(f"fleets.{name}.capacity.type", "reservation_id is set but type is on-demand",
                          "set type: reservation or capacity-block, or remove reservation_id")
    if config.placement_group and targeted:
        yield Problem("placement_group", f"fleet(s) {', '.join(targeted)} launch into a reservation, which fixes "
                                         "placement; a cluster placement group would make launches fail",
                      "remove placement_group (it then turns off by itself) or set placement_group: false")
    types = sorted({f.instance_type for f in config.fleets.values()})
    known = all(t in catalog.WORKER_TYPES and catalog.WORKER_TYPES[t].efa for t in types)
    if config.uses_placement_group and len(types) > 1 and known:
        yield Problem("placement_group", f"one cluster placement group cannot reliably hold {' and '.join(types)}",
                      "use one worker instance type, or set placement_group: false")
