"""The summary `cdk synth` prints after synthesis: what the template would deploy, read back from the template."""

from __future__ import annotations

from stacks import catalog
from stacks.config import DeploymentConfig


def summarize(config: DeploymentConfig, template: dict) -> str:
    """Per fleet: type x count, endpoints (role, cores, port), TP, EFA interfaces found in its launch template."""
    resources = template.get("Resources", {})
    efa_by_type = {}
    for resource in resources.values():
        if resource.get("Type") == "AWS::EC2::LaunchTemplate":
            data = resource["Properties"]["LaunchTemplateData"]
            nics = data.get("NetworkInterfaces", [])
            efa_by_type[data.get("InstanceType")] = sum(n.get("InterfaceType") in ("efa", "efa-only") for n in nics)
    lines = [f"DiStack {config.name} (stack {config.stack_name}, {config.region}/{config.availability_zone}, "
             f"mode {config.mode}, proxy {config.proxy})",
             f"  model {config.model.id}  max_model_len {config.model.max_model_len}  "
             f"max_num_seqs {config.model.max_num_seqs}"]
    for name, fleet in config.fleets.items():
        itype = catalog.WORKER_TYPES[fleet.instance_type]
        lines.append(f"  fleet {name:<10} {fleet.role:<9} {itype.name} x {fleet.count} (max {fleet.ceiling})  "
                     f"TP {fleet.tensor_parallel}  EFA interfaces {efa_by_type.get(itype.name, 0)}/instance"
                     f"{'  capacity ' + fleet.capacity.type + ' ' + str(fleet.capacity.reservation_id) if fleet.capacity.targeted else ''}")
        for ep in fleet.resolved_endpoints:
            lines.append(f"      endpoint {ep.index}: {ep.role:<8} cores {ep.cores:<7} port {ep.port}")
    lines.append(f"  control host {config.control_host.instance_type}: proxy :8000, etcd :8989; "
                 f"placement group {'on' if config.uses_placement_group else 'off'}")
    lines.append(f"  {len(resources)} resources")
    return "\n".join(lines)
