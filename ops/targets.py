"""Which instances a command reaches: a deployment's stack outputs plus `di:*` tags, as SSM `Targets`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from ops.aws import Clients, pages
from ops.errors import UsageError
from model import naming
from model.config import DeploymentConfig

# SendCommand accepts at most 50 values per target (and 50 InstanceIds):
# https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_SendCommand.html
MAX_TARGET_VALUES = 50
INSTANCE_ID = re.compile(r"^(i|mi)-[0-9a-f]{8,17}$")
LIVE_STATES = ("pending", "running")


@dataclass(frozen=True)
class Selection:
    """What the operator asked for: a role, a fleet, or explicit instance ids within one deployment."""

    role: str | None = None
    fleet: str | None = None
    instance_ids: tuple[str, ...] = ()

    def describe(self) -> str:
        """Human phrase for progress and error messages."""
        if self.instance_ids:
            return f"{len(self.instance_ids)} named instance(s)"
        parts = [f"role {self.role}" if self.role else "", f"fleet {self.fleet}" if self.fleet else ""]
        return " and ".join(p for p in parts if p) or "every instance"


@dataclass(frozen=True)
class Instance:
    """A live instance of the deployment with its DiStack tags."""

    instance_id: str
    role: str
    fleet: str
    state: str
    private_ip: str = ""


@dataclass
class Deployment:
    """One environment: its validated config, the AWS clients, and (read on demand) its stack outputs."""

    config: DeploymentConfig
    clients: Clients
    _outputs: dict[str, str] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """Environment name (config/NAME.yaml)."""
        return self.config.name

    def document(self, verb: str) -> str:
        """SSM document name of a verb in this deployment."""
        return naming.ssm_document(self.name, verb)

    @property
    def outputs(self) -> dict[str, str]:
        """Stack outputs by key (one DescribeStacks call, cached)."""
        if self._outputs is None:
            stack = naming.stack_name(self.name)
            try:
                response = self.clients.cloudformation.describe_stacks(StackName=stack)
            except ClientError as err:
                raise UsageError(f"stack {stack} not found in {self.clients.region}: "
                                 f"{err.response['Error'].get('Message', err)}\n"
                                 f"  fix: deploy it first (make deploy ENV={self.name}) or pass the right --region")
            found = response["Stacks"][0].get("Outputs", [])
            self._outputs = {o["OutputKey"]: o["OutputValue"] for o in found}
        return self._outputs

    def output(self, key: str) -> str:
        """One stack output; missing means the stack predates this key or is still being created."""
        value = self.outputs.get(key)
        if not value:
            raise UsageError(f"stack {naming.stack_name(self.name)} has no output {key}\n"
                             f"  fix: finish or repeat the deploy (make deploy ENV={self.name})")
        return value

    @property
    def bucket(self) -> str:
        """Artifacts bucket: compiled artifacts, bench results and logs go here."""
        return self.output(naming.OUTPUT_BUCKET)

    @property
    def node_role_ids(self) -> tuple[str, ...]:
        """IDs of the worker and control roles: the ROLE-ID of every ROLE-ID:INSTANCE-ID folder a node may write
        (model/write_scope.py). dictl takes nothing from a folder whose ROLE-ID is not one of them."""
        return tuple(i for i in self.output(naming.OUTPUT_NODE_ROLE_IDS).split(",") if i)

    def fleet_group(self, fleet: str) -> str:
        """Auto Scaling group name of a fleet."""
        if fleet == naming.ROLE_CONTROL:
            return self.output(naming.OUTPUT_CONTROL_INSTANCE_GROUP)
        return self.output(naming.fleet_output(fleet))

    def validate(self, selection: Selection) -> Selection:
        """Reject a fleet the config does not know or a malformed id before any AWS call."""
        known = sorted(self.config.fleets) + [naming.ROLE_CONTROL]
        if selection.fleet and selection.fleet not in known:
            raise UsageError(f"--fleet {selection.fleet}: no such fleet in config/{self.name}.yaml\n"
                             f"  fix: use one of {', '.join(known)}")
        bad = [i for i in selection.instance_ids if not INSTANCE_ID.match(i)]
        if bad:
            raise UsageError(f"--instance-id {', '.join(bad)}: not an EC2 instance id\n"
                             "  fix: pass ids such as i-0123456789abcdef0")
        if selection.instance_ids and (selection.role or selection.fleet):
            raise UsageError("--instance-id cannot be combined with --role or --fleet\n"
                             "  fix: name instances, or select them by role/fleet, not both")
        return selection

    def ssm_targets(self, selection: Selection) -> list[list[dict[str, Any]]]:
        """SSM Targets, one list per SendCommand: one by tags, or named ids in chunks of 50."""
        if selection.instance_ids:
            ids = list(selection.instance_ids)
            return [[{"Key": "InstanceIds", "Values": ids[i:i + MAX_TARGET_VALUES]}]
                    for i in range(0, len(ids), MAX_TARGET_VALUES)]
        targets = [{"Key": f"tag:{naming.TAG_DEPLOYMENT}", "Values": [self.name]}]
        if selection.role:
            targets.append({"Key": f"tag:{naming.TAG_ROLE}", "Values": [selection.role]})
        if selection.fleet:
            targets.append({"Key": f"tag:{naming.TAG_FLEET}", "Values": [selection.fleet]})
        return [targets]

    def instances(self, selection: Selection) -> list[Instance]:
        """Live instances matching the selection (DescribeInstances, up to 1,000 per page)."""
        filters = [{"Name": f"tag:{naming.TAG_DEPLOYMENT}", "Values": [self.name]},
                   {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
        if selection.role:
            filters.append({"Name": f"tag:{naming.TAG_ROLE}", "Values": [selection.role]})
        if selection.fleet:
            filters.append({"Name": f"tag:{naming.TAG_FLEET}", "Values": [selection.fleet]})
        if selection.instance_ids:
            filters.append({"Name": "instance-id", "Values": list(selection.instance_ids)})
        found: list[Instance] = []
        for page in pages(self.clients.ec2.describe_instances, Filters=filters, MaxResults=1000):
            for reservation in page.get("Reservations", []):
                for item in reservation.get("Instances", []):
                    tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
                    found.append(Instance(item["InstanceId"], tags.get(naming.TAG_ROLE, "?"),
                                          tags.get(naming.TAG_FLEET, "?"), item["State"]["Name"],
                                          item.get("PrivateIpAddress", "")))
        if selection.instance_ids:
            missing = sorted(set(selection.instance_ids) - {i.instance_id for i in found})
            if missing:
                raise UsageError(f"{', '.join(missing)}: not a live instance of deployment {self.name}\n"
                                 f"  fix: list them with `dictl status --env {self.name}`")
        return sorted(found, key=lambda i: (i.fleet, i.instance_id))
