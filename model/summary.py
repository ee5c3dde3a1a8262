"""The summary `cdk synth` prints after synthesis: what the template would deploy, read back from the template."""

from __future__ import annotations

from model import catalog, images
from model.config import DeploymentConfig


def summarize(config: DeploymentConfig, template: dict) -> str:
    """Engine and image facts, then per fleet: type x count, endpoints (role, cores, port), TP, EFA interfaces and
    AMI found in its launch template."""
    resources = template.get("Resources", {})
    efa_by_type, ami_by_type = {}, {}
    for resource in resources.values():
        if resource.get("Type") == "AWS::EC2::LaunchTemplate":
            data = resource["Properties"]["LaunchTemplateData"]
            nics = data.get("NetworkInterfaces", [])
            efa_by_type[data.get("InstanceType")] = sum(n.get("InterfaceType") in ("efa", "efa-only") for n in nics)
            ami_by_type[data.get("InstanceType")] = data.get("ImageId")
    lines = [f"DiStack {config.name} (stack {config.stack_name}, {config.region}/{config.availability_zone}, "
             f"engine {config.engine}, mode {config.mode}, proxy {config.proxy})",
             f"  image {config.image}",
             f"        {_image_facts(config)}"]
    worker_amis = sorted({str(ami_by_type.get(f.instance_type)) for f in config.fleets.values()})
    lines.append(f"  worker AMI {', '.join(worker_amis)}{_ami_note(config)}")
    lines += config.engine_module.summary(config)
    lines.append(f"  model {config.model.id}  max_model_len {config.model.max_model_len}  "
                 f"max_num_seqs {config.model.max_num_seqs}")
    for name, fleet in config.fleets.items():
        itype = catalog.WORKER_TYPES[fleet.instance_type]
        lines.append(f"  fleet {name:<10} {fleet.role:<9} {itype.name} x {fleet.count} (max {fleet.ceiling})  "
                     f"TP {fleet.tensor_parallel}  EFA interfaces {efa_by_type.get(itype.name, 0)}/instance"
                     f"{'  capacity ' + fleet.capacity.type + ' ' + str(fleet.capacity.reservation_id) if fleet.capacity.targeted else ''}")
        for ep in fleet.resolved_endpoints:
            lines.append(f"      endpoint {ep.index}: {ep.role:<8} {itype.range_key:<5} {ep.cores:<7} port {ep.port}")
    lines.append(f"  control host {config.control_host.instance_type}: proxy :8000, etcd :8989; "
                 f"placement group {'on' if config.uses_placement_group else 'off'}")
    lines.append(f"  {len(resources)} resources")
    return "\n".join(lines)


def _image_facts(config: DeploymentConfig) -> str:
    entry = config.image_entry
    if entry is None:
        return "unlisted (image_unlisted: true); what it carries is taken on the config's word"
    if entry.accelerator != catalog.NEURON:
        return (f"{entry.repository}, vLLM {entry.vllm or 'as LMCache pairs it'}; {entry.status}; "
                f"{'/'.join(entry.families)}")
    return (f"vLLM {entry.vllm}, Neuron SDK {entry.sdk}, Python {entry.python}, Ubuntu {entry.ubuntu}; "
            f"{entry.status}; {'/'.join(entry.families)}")


def _ami_note(config: DeploymentConfig) -> str:
    ubuntu = config.dlami_ubuntu
    if ubuntu is not None:
        frozen = ", frozen at its last build" if ubuntu == "22.04" else ""
        return f" (Neuron base DLAMI, Ubuntu {ubuntu}{frozen}, host of the Ubuntu {config.image_entry.ubuntu} image)"
    if config.worker_ami.ssm_parameter == images.GPU_DLAMI_PARAMETER and config.worker_ami.image_id is None:
        return " (Deep Learning Base GPU AMI, Ubuntu 24.04)"
    return " (as set in worker_ami)"
