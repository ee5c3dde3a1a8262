"""Static cross-field rules on a parsed DeploymentConfig: every problem with its dotted path and fix.

Only rules that need no AWS call belong here; those that do are `dictl preflight`'s.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Iterator

from model import catalog, engines, images, naming, routing_rules, scaling_rules, security_rules
from model.config import LOG_RETENTION_DAYS, DeploymentConfig, FleetConfig, ResolvedEndpoint
from model.engines.base import set_value
from model.problems import Problem, skip_unusable

__all__ = ["Problem", "check", "warnings"]

FLEET_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}$")


def check(config: DeploymentConfig, *, file_stem: str | None = None) -> list[Problem]:
    """Every static rule violation in `config`, in file order where possible.

    `config` may be partially valid (model/partial.py): each rule runs inside skip_unusable, so one that reads a
    setting which failed validation stops there and the others still run.
    """
    problems: list[Problem] = []
    problems += skip_unusable(_name(config, file_stem))
    problems += skip_unusable(_region_and_zone(config))
    problems += skip_unusable(_network(config))
    problems += security_rules.check(config)
    problems += skip_unusable(_engine(config))
    problems += skip_unusable(_model_size(config))
    problems += skip_unusable(_proxy(config))
    problems += skip_unusable(_monitoring(config))
    problems += skip_unusable(_fleets(config))
    problems += skip_unusable(_roles(config))
    problems += skip_unusable(_placement(config))
    problems += skip_unusable(scaling_rules.check(config))
    problems += skip_unusable(routing_rules.check(config))
    problems += skip_unusable(_log_retention(config))
    return problems


def _name(config: DeploymentConfig, file_stem: str | None) -> Iterator[Problem]:
    if file_stem is not None and config.name != file_stem:
        yield Problem("name", f"name is '{config.name}' but the file is {file_stem}.yaml",
                      f"set name: {file_stem} (the file name picks the environment; the name picks the stack)")


def _fleets(config: DeploymentConfig) -> Iterator[Problem]:
    for fleet_name, fleet in config.fleets.items():
        yield from skip_unusable(_fleet(config, fleet_name, fleet))


def _log_retention(config: DeploymentConfig) -> Iterator[Problem]:
    if config.log_retention_days not in LOG_RETENTION_DAYS:
        yield Problem("log_retention_days", f"{config.log_retention_days} is not a CloudWatch retention",
                      f"use one of {', '.join(map(str, LOG_RETENTION_DAYS[:12]))}, ...")


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
    # Client networks: model/security_rules.py.
    if config.control_host.private_ip is not None and not net.existing:
        try:
            inside = ipaddress.IPv4Address(config.control_host.private_ip) in ipaddress.IPv4Network(net.vpc_cidr)
        except ValueError:
            inside = True  # reported above
        if not inside:
            yield Problem("control_host.private_ip", f"{config.control_host.private_ip} is outside {net.vpc_cidr}",
                          "pick an address in the private subnet, or remove it to let EC2 choose once")


def _engine(config: DeploymentConfig) -> Iterator[Problem]:
    """Shared engine rules: its settings section, its image, its instance families; then the engine's own rules."""
    engine = config.engine_module
    for other in engines.ENGINES.values():
        key = other.settings_key
        if key and other is not engine and key in config.model_fields_set:
            yield Problem(key, f"the {key} section configures engine {other.name}, but engine is {engine.name}",
                          f"remove the {key} section, or set engine: {other.name}")
        for old, name in other.moved_settings.items():
            if set_value(config, old) is None:
                continue
            if other is not engine:
                yield Problem(old, f"{old.rsplit('.', 1)[-1]} (now {key}.{name}) configures engine {other.name}, but "
                                   f"engine is {engine.name}", f"remove it, or set engine: {other.name}")
            elif set_value(config, f"{key}.{name}") is not None:
                yield Problem(old, f"set twice: here and at {key}.{name}, its place now",
                              f"remove {old}, keeping {key}.{name}")
    yield from _image(config, engine)
    for name, fleet in config.fleets.items():
        yield from _family(config, engine, name, fleet)
    model = config.model
    if model.source == "huggingface" and model.id.startswith("meta-llama/") and model.hf_token_secret is None:
        yield Problem("model.hf_token_secret", f"{model.id} is gated on Hugging Face and needs a token",
                      "store the token in Secrets Manager and set hf_token_secret to its name, "
                      "or set source: s3 and upload the weights to models/ in the artifacts bucket")
    yield from skip_unusable(engine.check(config))


def _image(config: DeploymentConfig, engine: engines.Engine) -> Iterator[Problem]:
    entry = config.image_entry
    if entry is None and not config.image_unlisted:
        yield Problem("image", f"'{config.image}' is not in DiStack's image catalog (model/images.py), so whether it "
                               f"carries engine {engine.name} is unknown",
                      f"use {engine.default_image}, or set image_unlisted: true to accept it (synth then warns)")
    elif entry is not None and engine.name not in entry.engines:
        accepted = ", ".join(image.tag for image in images.for_engine(engine.name, config.accelerator))
        yield Problem("image", f"engine {engine.name} cannot run {entry.tag}: {entry.refusal(engine.name)}",
                      f"use one of its images: {accepted}" if accepted else "use another engine")
    if config.image_unlisted and config.worker_ami.image_id is None and config.worker_ami.ssm_parameter is None:
        # The catalog names each image's host; for an unlisted one nothing does (a tag's Ubuntu is the container's,
        # not the host's), so the config must, rather than launch workers from a guessed DLAMI parameter.
        yield Problem("image", f"DiStack does not know which host AMI runs the unlisted image '{config.image}' "
                               "(the container's Ubuntu need not match the host's)",
                      f"set worker_ami.ssm_parameter (the Neuron base DLAMI for Neuron SDK 2.31 and later: "
                      f"{images.dlami_parameter('24.04')}) or worker_ami.image_id")


def _family(config: DeploymentConfig, engine: engines.Engine, name: str, fleet: FleetConfig) -> Iterator[Problem]:
    itype = catalog.WORKER_TYPES.get(fleet.instance_type)
    if itype is None or not itype.efa:
        return  # reported by the fleet rules
    if itype.family not in engine.instance_families:
        others = [e.name for e in engines.ENGINES.values() if itype.family in e.instance_families]
        fitting = next(t.name for t in catalog.WORKER_TYPES.values() if t.efa and t.family in engine.instance_families)
        yield Problem(f"fleets.{name}.instance_type",
                      f"engine {engine.name} runs on {'/'.join(engine.instance_families)} only, not {itype.name}",
                      f"use {fitting}" + (f", or engine: {others[0]}" if others else ""))
    elif itype.accelerator != config.accelerator:
        return  # one accelerator per deployment: reported by the fleet rules
    elif config.image_entry is not None and itype.family not in config.image_entry.families:
        yield Problem(f"fleets.{name}.instance_type",
                      f"image {config.image_entry.tag} supports {'/'.join(config.image_entry.families)}, "
                      f"not {itype.name}", "use another instance type, or an image listed for it in model/images.py")


def warnings(config: DeploymentConfig) -> list[Problem]:
    """What synth accepts but prints: an unlisted image taken on the user's word, a setting at its old place."""
    found = []
    if config.image_entry is None and config.image_unlisted:
        ami = config.worker_ami.image_id or config.worker_ami.ssm_parameter
        found.append(Problem("image", f"'{config.image}' is not in DiStack's image catalog; accepted because "
                                      f"image_unlisted is true (worker AMI {ami} as set)",
                             f"make sure it carries engine {config.engine}'s server and run `dictl preflight`; "
                             "add it to model/images.py once known"))
    engine = config.engine_module
    for old, name in engine.moved_settings.items():
        value = set_value(config, old)
        if value is not None:
            found.append(Problem(old, f"deprecated: {old.rsplit('.', 1)[-1]} moved to {engine.settings_key}.{name}",
                                 f"write it as {engine.settings_key}: {{{name}: {value:g}}} and remove {old}"
                                 if isinstance(value, float) else f"move it to {engine.settings_key}.{name}"))
    found += scaling_rules.warnings(config)
    return found


def _proxy(config: DeploymentConfig) -> Iterator[Problem]:
    engine = config.engine_module
    if config.mode == "standard" and not config.runs_distack_proxy:
        yield Problem("proxy", "neuron-proxy-server only pairs prefill with decode workers; it cannot balance "
                               "standard endpoints", "set proxy: distack, or remove proxy (standard mode's default)")
    elif config.proxy not in engine.proxies:
        yield Problem("proxy", f"engine {engine.name} needs the {' or '.join(engine.proxies)} proxy: "
                               "neuron-proxy-server exists only in the 0.9.1 images and speaks only NeuronConnector's "
                               "protocol", f"set proxy: {engine.proxies[0]}, or remove proxy (the engine's default)")
    elif config.proxy_api_key_secret is not None and not config.runs_distack_proxy:
        yield Problem("proxy_api_key_secret", "neuron-proxy-server checks no API key, so the key would guard nothing",
                      "set proxy: distack, or remove proxy_api_key_secret")


# Thresholds of alarms on the DiStack proxy's metrics; neuron-proxy-server publishes none.
PROXY_ALARM_KEYS = ("ttft_p99_slo_ms", "no_pair_minutes", "server_error_percent")


def _monitoring(config: DeploymentConfig) -> Iterator[Problem]:
    if config.runs_distack_proxy:
        return
    for key in PROXY_ALARM_KEYS:
        if key in config.monitoring.model_fields_set:
            yield Problem(f"monitoring.{key}", "neuron-proxy-server publishes no metrics, so this alarm would "
                                               "never see data", "remove it, or set proxy: distack")


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
        usable = [t for t, v in catalog.WORKER_TYPES.items() if v.efa]
        close = difflib.get_close_matches(fleet.instance_type, usable, n=1, cutoff=0.8)
        yield Problem(f"{at}.instance_type", f"unknown worker instance type '{fleet.instance_type}'"
                                             + (f"; did you mean '{close[0]}'?" if close else ""),
                      f"set instance_type: {close[0]}" if close else f"use one of {', '.join(usable)}")
        return
    if not itype.efa:
        yield Problem(f"{at}.instance_type", f"{itype.name} has no EFA; DI's KV transfer and DiStack's worker "
                                             "network need it, even on one instance",
                      "use trn1.32xlarge, trn1n.32xlarge or trn2.48xlarge")
        return
    if fleet.lnc is not None and not itype.neuron:
        yield Problem(f"{at}.lnc", f"LNC (Logical NeuronCore Config) is a Trainium setting; {itype.name} has GPUs",
                      "remove lnc")
        return
    if itype.accelerator != config.accelerator:
        yield Problem(f"{at}.instance_type", f"{itype.name} has {itype.device_noun} but the deployment's other fleets "
                                             f"have {config.accelerator} devices; one deployment runs one worker "
                                             "image and AMI", "use one accelerator family in every fleet")
        return
    if fleet.lnc is not None and fleet.lnc not in itype.supported_lnc:
        yield Problem(f"{at}.lnc", f"{itype.name} does not support LNC={fleet.lnc}",
                      f"use one of {itype.supported_lnc} or remove lnc")
        return
    yield from _endpoints(config, at, fleet, itype)


def _endpoints(config: DeploymentConfig, at: str, fleet: FleetConfig, itype: catalog.InstanceType) -> Iterator[Problem]:
    devices = itype.devices(fleet.lnc)
    noun = itype.device_noun
    # "cores"/"core" on Trainium, "GPUs"/"GPU" on GPU types: the words of the messages and the key that holds ranges.
    plural, single = ("cores", "core") if itype.neuron else ("GPUs", "GPU")
    key = itype.range_key
    where_lnc = f" (LNC={fleet.lnc or itype.default_lnc})" if itype.neuron else ""
    endpoints = fleet.resolved_endpoints
    if fleet.endpoints:
        other = "gpus" if itype.neuron else "cores"
        wrong = [i for i, ep in enumerate(fleet.endpoints) if getattr(ep, other) is not None]
        if wrong:
            yield Problem(f"{at}.endpoints[{wrong[0]}].{other}",
                          f"{itype.name} has {noun}: its endpoints give their range as {key}, not {other}",
                          f"rename {other}: to {key}:")
            return
    if fleet.tensor_parallel * len(endpoints) > devices:
        yield Problem(f"{at}.tensor_parallel",
                      f"{len(endpoints)} endpoint(s) x TP {fleet.tensor_parallel} = "
                      f"{len(endpoints) * fleet.tensor_parallel} {noun}, but {itype.name} has {devices}{where_lnc}",
                      f"lower tensor_parallel to {devices // len(endpoints)} or use fewer endpoints")
        return
    taken: dict[int, int] = {}
    ports: dict[int, int] = {}
    for ep in endpoints:
        where = f"{at}.endpoints[{ep.index}]"
        if ep.core_count != fleet.tensor_parallel:
            yield Problem(f"{where}.{key}", f"range {ep.cores} holds {ep.core_count} {plural} but tensor_parallel is "
                                            f"{fleet.tensor_parallel}",
                          f"give it exactly {fleet.tensor_parallel} {plural}, e.g. "
                          f"{ep.first_core}-{ep.first_core + fleet.tensor_parallel - 1}")
        elif ep.last_core >= devices:
            yield Problem(f"{where}.{key}", f"range {ep.cores} goes past {single} {devices - 1} of {itype.name}"
                                            f"{where_lnc}",
                          f"keep ranges within 0-{devices - 1}")
        else:
            overlap = sorted({taken[c] for c in range(ep.first_core, ep.last_core + 1) if c in taken})
            if overlap:
                yield Problem(f"{where}.{key}", f"range {ep.cores} overlaps endpoint {overlap[0]}",
                              f"give each endpoint its own {plural} ({noun} cannot be shared between processes)")
            elif itype.aligned_core_ranges and ep.first_core % fleet.tensor_parallel:
                yield _misaligned(where, key, single, ep, fleet.tensor_parallel, devices, itype)
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


def _misaligned(where: str, key: str, single: str, ep: ResolvedEndpoint, tp: int, devices: int,
                itype: catalog.InstanceType) -> Problem:
    """A range whose first core is not a multiple of its TP degree, where the type needs it (catalog.InstanceType.
    aligned_core_ranges); the fix names the nearest aligned range that stays on the instance."""
    start = -(-ep.first_core // tp) * tp
    start = start if start + tp <= devices else ep.first_core // tp * tp
    return Problem(f"{where}.{key}", f"range {ep.cores} starts at {single} {ep.first_core}, not a multiple of "
                                     f"tensor_parallel {tp}: on {itype.family} such a range compiles, then fails at "
                                     "warm-up with 'Collective operation REDUCE_SCATTER ... is currently not "
                                     "supported' (vllm-neuron EPD tutorial, Common issues)",
                   f"start it on a multiple of {tp}, e.g. {start}-{start + tp - 1}")


def _memory(config: DeploymentConfig, at: str, fleet: FleetConfig, itype: catalog.InstanceType) -> Iterator[Problem]:
    model = config.model
    params_b = model.parameters_billion or catalog.KNOWN_MODEL_PARAMETERS_B.get(model.id)
    if params_b is not None:
        weights_gib = params_b * 1e9 * catalog.DTYPE_BYTES[model.dtype] / catalog.GIB
        device_gib = itype.memory_gib_per_device(fleet.lnc) * fleet.tensor_parallel
        if weights_gib > device_gib:
            held = (f"{fleet.tensor_parallel} cores of {itype.name} hold {device_gib:.0f} GiB of HBM" if itype.neuron
                    else f"{fleet.tensor_parallel} GPUs of {itype.name} hold {device_gib:.0f} GiB of GPU memory")
            yield Problem(f"{at}.tensor_parallel",
                          f"{model.id} needs {weights_gib:.0f} GiB for {model.dtype} weights but {held}",
                          "raise tensor_parallel (fewer endpoints per instance) or use a smaller model or dtype")


# A size in a model's name, e.g. Llama-3.1-405B-Instruct, gpt-oss-20b; not the expert size of "8x7B".
NAMED_SIZE = re.compile(r"(?<![\dx.])(\d+(?:\.\d+)?)[bB](?![A-Za-z])")


def _model_size(config: DeploymentConfig) -> Iterator[Problem]:
    """The weights-fit-HBM rule (_memory) needs the model's size: unknown, it would pass any TP in silence."""
    model = config.model
    if model.parameters_billion is not None or model.id in catalog.KNOWN_MODEL_PARAMETERS_B:
        return
    named = NAMED_SIZE.findall(model.id.rsplit("/", 1)[-1])
    size = named[-1] if named else None
    how = (f"set model.parameters_billion: {size} (the name says {size}B; the model card gives the exact count)"
           if size else "set model.parameters_billion to its parameter count in billions (from the model card)")
    yield Problem("model.id", f"the size of {model.id} is unknown, so whether its {model.dtype} weights fit the HBM "
                              "of each endpoint's NeuronCores cannot be checked",
                  f"{how}; with dictl rollout --model, pass --parameters-billion")


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
    if config.placement_group and targeted and config.placement_group_name is None:
        fix = "remove placement_group (it then turns off by itself) or set placement_group: false"
        if any(config.fleets[n].capacity.type == "reservation" for n in targeted):
            # AWS recommends reserving capacity in the group: "To ensure that capacity is available ... create a
            # Capacity Reservation for your cluster placement group" (EC2 UG, efa-start.html, step 8); such a
            # reservation is created in an existing group, so the stack names it instead of creating one
            # (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/cr-cpg.html).
            fix += ("; for an On-Demand Capacity Reservation created in a cluster placement group, name that group "
                    "instead: placement_group_name: NAME")
        yield Problem("placement_group", f"fleet(s) {', '.join(targeted)} launch into a reservation, which fixes "
                                         "placement; a new cluster placement group would make launches fail", fix)
    # The fleets that share a cluster placement group (a Capacity Block fleet never joins one).
    types = sorted({f.instance_type for n, f in config.fleets.items() if config.fleet_placement_group(n)})
    known = all(t in catalog.WORKER_TYPES and catalog.WORKER_TYPES[t].efa for t in types)
    if len(types) > 1 and known:
        yield Problem("placement_group", f"one cluster placement group cannot reliably hold {' and '.join(types)}",
                      "use one worker instance type, or set placement_group: false")
