"""`dictl preflight`: the checks synth cannot make because they need AWS (offerings, EFA, reservations,
AMIs, quotas, the token secret), each finding with its level and its fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, NoCredentialsError,
                                 PartialCredentialsError, ProfileNotFound, ReadTimeoutError)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ops.aws import Clients
from model import catalog, cron, scaling_config
from model.config import DeploymentConfig, FleetConfig

ERROR, WARNING, INFO = "ERROR", "WARNING", "INFO"
# Service Quotas codes for On-Demand vCPU limits (EC2 counts vCPUs per instance family group).
# https://docs.aws.amazon.com/ec2/latest/instancetypes/ec2-instance-quotas.html
# The P and G quota codes are not on that page; they are the codes Service Quotas lists for those names (as in AWS's
# console links, e.g. https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas/L-417A185B). A wrong code
# shows as a "could not read" warning naming it, never as a silent pass.
VCPU_QUOTAS = {"trn": ("L-2C3B7624", "Running On-Demand Trn instances"),
               "p": ("L-417A185B", "Running On-Demand P instances"),
               "g": ("L-DB2E81BA", "Running On-Demand G and VT instances"),
               "standard": ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances")}


def quota_group(family: str) -> str:
    """The On-Demand vCPU quota an instance family draws on (trn2 -> trn, p5en -> p, g6 -> g)."""
    return "trn" if family.startswith("trn") else family[:1]


CONTROL_VCPUS = {"m5.large": 2, "m5.xlarge": 4, "m5.2xlarge": 8, "m5.4xlarge": 16}
# Why a check could not run. CREDENTIALS and NETWORK stop every later check the same way, so preflight stops at
# the first and reports it once; DENIED is collected across checks and reported as one finding.
CREDENTIALS, NETWORK, DENIED = "credentials", "network", "denied"
CREDENTIAL_CODES = {"InvalidClientTokenId", "UnrecognizedClientException", "ExpiredToken", "ExpiredTokenException",
                    "AuthFailure", "SignatureDoesNotMatch", "RequestExpired", "InvalidAccessKeyId"}
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"}


def cause_of(err: BaseException) -> str | None:
    """CREDENTIALS, NETWORK or DENIED when `err` means a check could not run at all; None otherwise."""
    if isinstance(err, (NoCredentialsError, PartialCredentialsError, ProfileNotFound)):
        return CREDENTIALS
    if isinstance(err, (BotoConnectionError, ReadTimeoutError, ConnectionClosedError)):
        return NETWORK
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code in CREDENTIAL_CODES:
            return CREDENTIALS
        if code in DENIED_CODES:
            return DENIED
    return None


class Blocked(Exception):
    """No check can run (no credentials, no network): preflight stops and says so once."""

    def __init__(self, kind: str, err: BaseException) -> None:
        super().__init__(str(err))
        self.kind, self.err = kind, err


@dataclass(frozen=True)
class Finding:
    """One result: what was checked, what was found, and what to do about it."""

    level: str
    subject: str
    message: str
    fix: str = ""


class Preflight:
    """Runs every check for one config; each check appends findings instead of stopping at the first."""

    def __init__(self, config: DeploymentConfig, clients: Clients,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.config = config
        self.clients = clients
        self.clock = clock
        self.findings: list[Finding] = []
        # Set when a check could not run for a reason every check shares (CREDENTIALS or NETWORK).
        self.blocked: str | None = None
        self._denied: list[str] = []

    def run(self) -> list[Finding]:
        """All checks, in the order an operator fixes them; one ERROR names why checks could not run."""
        try:
            self._checks()
        except Blocked as stop:
            self.blocked = stop.kind
            region = self.config.region
            if stop.kind == CREDENTIALS:
                self.add(ERROR, "AWS credentials", f"no usable credentials, so nothing was checked: {stop.err}",
                         "configure credentials (aws configure, aws sso login, AWS_PROFILE or --profile), "
                         f"then check them with `aws sts get-caller-identity --region {region}`")
            else:
                self.add(ERROR, "AWS endpoint", f"cannot reach AWS, so nothing was checked: {stop.err}",
                         f"check the network, any proxy settings (HTTPS_PROXY) and the region ({region})")
            return self.findings
        if self._denied:
            self.add(ERROR, "permissions", f"access denied, so {len(self._denied)} check(s) did not run: "
                     + "; ".join(self._denied),
                     "run preflight with a role allowed to read EC2, SSM parameters, Service Quotas and Secrets "
                     "Manager (e.g. the ReadOnlyAccess managed policy)")
        return self.findings

    def _checks(self) -> None:
        types = {f.instance_type for f in self.config.fleets.values()}
        for instance_type in sorted(types | {self.config.control_host.instance_type}):
            self._guard(f"offering {instance_type}", lambda t=instance_type: self.offering(t))
        for instance_type in sorted(types):
            self._guard(f"instance type {instance_type}", lambda t=instance_type: self.efa(t))
        for name, fleet in self.config.fleets.items():
            if fleet.capacity.reservation_id:
                self._guard(f"fleet {name} reservation", lambda n=name: self.reservation(n))
        if self.config.placement_group_name:
            self._guard("placement group", self.placement_group)
        self.schedule_times()
        self._guard("worker AMI", lambda: self.ami("worker AMI", self.config.worker_ami))
        self._guard("control host AMI", lambda: self.ami("control host AMI", self.config.control_host.ami))
        self.quotas()
        if self.config.model.hf_token_secret:
            self._guard("token secret", self.secret)

    def add(self, level: str, subject: str, message: str, fix: str = "") -> None:
        """Record one finding."""
        self.findings.append(Finding(level, subject, message, fix))

    def _guard(self, subject: str, check: Callable[[], None]) -> None:
        """A check that fails for its own reason becomes a WARNING; one that could not run is sorted by cause."""
        try:
            check()
        except (ClientError, BotoCoreError) as err:
            if not self._not_run(subject, err):
                self.add(WARNING, subject, f"could not check: {err}",
                         "run with credentials allowed to call it, or check by hand in the console")

    def _not_run(self, subject: str, err: BaseException) -> bool:
        """Raise Blocked for a cause every check shares; remember a denied call (True); False for anything else."""
        kind = cause_of(err)
        if kind in (CREDENTIALS, NETWORK):
            raise Blocked(kind, err) from err
        if kind == DENIED:
            self._denied.append(f"{subject} ({getattr(err, 'operation_name', '') or 'denied'})")
            return True
        return False

    def offering(self, instance_type: str) -> None:
        """The AZ must offer the type (Trainium is in few zones)."""
        az, region = self.config.availability_zone, self.config.region
        found = self.clients.ec2.describe_instance_type_offerings(
            LocationType="availability-zone",
            Filters=[{"Name": "location", "Values": [az]}, {"Name": "instance-type", "Values": [instance_type]}],
        ).get("InstanceTypeOfferings", [])
        if found:
            self.add(INFO, instance_type, f"offered in {az}")
        else:
            self.add(ERROR, instance_type, f"not offered in {az}",
                     f"set availability_zone in config/{self.config.name}.yaml to a zone listed by `aws ec2 "
                     f"describe-instance-type-offerings --location-type availability-zone --filters "
                     f"Name=instance-type,Values={instance_type} --region {region}`")

    def efa_findings(self, instance_type: str) -> list[Finding]:
        """Only the findings of the EFA check for one type."""
        before = len(self.findings)
        self.efa(instance_type)
        return self.findings[before:]

    def efa(self, instance_type: str) -> None:
        """EFA support and the network-card/EFA counts the launch template is built from."""
        known = catalog.WORKER_TYPES.get(instance_type)
        try:
            described = self.clients.ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
        except ClientError as err:
            if "InvalidInstanceType" not in str(err):
                raise
            described = []
        if not described:
            self.add(ERROR, instance_type, "unknown to EC2 in this region",
                     f"choose a Trainium type available in {self.config.region}")
            return
        network = described[0].get("NetworkInfo", {})
        if not network.get("EfaSupported"):
            self.add(ERROR, instance_type, "does not support EFA",
                     f"use an EFA type from the catalog: {', '.join(sorted(catalog.WORKER_TYPES))}")
            return
        cards = network.get("MaximumNetworkCards")
        interfaces = network.get("EfaInfo", {}).get("MaximumEfaInterfaces")
        if known is None:
            self.add(ERROR, instance_type, "not in model/catalog.py", "add its facts to model/catalog.py")
            return
        if cards is not None and cards != known.network_cards:
            self.add(ERROR, instance_type, f"EC2 reports {cards} network cards, model/catalog.py says "
                     f"{known.network_cards}", "correct network_cards in model/catalog.py")
        if interfaces is not None and interfaces != known.efa_interfaces:
            self.add(ERROR, instance_type, f"EC2 reports {interfaces} EFA interfaces, model/catalog.py implies "
                     f"{known.efa_interfaces}", "correct network_cards/efa in model/catalog.py")
        if (cards is None or cards == known.network_cards) and (
                interfaces is None or interfaces == known.efa_interfaces):
            self.add(INFO, instance_type, f"EFA supported, {cards} network cards, {interfaces} EFA interfaces")

    def reservation(self, fleet_name: str) -> None:
        """The reservation exists, is usable, and matches the fleet's type and AZ."""
        fleet = self.config.fleets[fleet_name]
        rid = fleet.capacity.reservation_id
        subject = f"fleet {fleet_name} reservation {rid}"
        try:
            found = self.clients.ec2.describe_capacity_reservations(
                CapacityReservationIds=[rid])["CapacityReservations"]
        except ClientError as err:
            if "NotFound" not in str(err) and "Malformed" not in str(err):
                raise
            found = []
        if not found:
            self.add(ERROR, subject, "not found in this account and region",
                     f"check fleets.{fleet_name}.capacity.reservation_id in config/{self.config.name}.yaml")
            return
        item = found[0]
        problems = []
        if item.get("InstanceType") != fleet.instance_type:
            problems.append(f"is for {item.get('InstanceType')}, the fleet uses {fleet.instance_type}")
        if item.get("AvailabilityZone") != self.config.availability_zone:
            problems.append(f"is in {item.get('AvailabilityZone')}, the config uses {self.config.availability_zone}")
        for problem in problems:
            self.add(ERROR, subject, problem, "use a reservation matching the fleet, or change the fleet to match it")
        problems += self._reservation_placement(fleet_name, subject, item)
        state = item.get("State", "")
        usable = {"active"} | ({"scheduled", "payment-pending"} if fleet.capacity.type == "capacity-block" else set())
        if state not in usable:
            self.add(ERROR, subject, f"state is {state}", "use an active reservation (or wait for the block to start)")
        elif state != "active":
            self.add(WARNING, subject, f"state is {state}: instances launch when it becomes active",
                     "deploy after the block's start time")
        available = item.get("AvailableInstanceCount", 0)
        if state == "active" and available < fleet.initial_size:
            self.add(WARNING, subject, f"{available} instance(s) free, the fleet starts with {fleet.initial_size}",
                     "free capacity in the reservation or lower the fleet's count (min_count when it scales)")
        total = item.get("TotalInstanceCount")
        if total is not None and total < fleet.ceiling:
            self.add(WARNING, subject, f"holds {total} instance(s), the fleet may grow to {fleet.ceiling}: launches "
                     "beyond the reservation fail", f"lower fleets.{fleet_name}.max_count to {total}, or grow the "
                     "reservation")
        if fleet.capacity.type == "capacity-block" and item.get("EndDate"):
            self._block_end(fleet_name, subject, item["EndDate"])
        if not problems and state in usable:
            self.add(INFO, subject, f"{item.get('InstanceType')} in {item.get('AvailabilityZone')}, {state}")

    def _reservation_placement(self, fleet_name: str, subject: str, item: dict[str, Any]) -> list[str]:
        """A reservation created in a cluster placement group serves only instances launched into that group
        (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/cr-cpg.html), so the group the config names must be
        the reservation's. Capacity Blocks need none."""
        if self.config.fleets[fleet_name].capacity.type != "reservation":
            return []
        arn = item.get("PlacementGroupArn") or ""
        reserved_in = arn.rsplit("placement-group/", 1)[-1] if arn else None
        named = self.config.placement_group_name
        if reserved_in == named:
            return []
        if reserved_in is None:
            message = f"was not created in a placement group, but the config launches the fleet into {named}"
            fix = "remove placement_group_name, or use a reservation created in that group"
        elif named is None:
            message = f"was created in placement group {reserved_in}; instances use it only when launched there"
            fix = f"set placement_group_name: {reserved_in} in config/{self.config.name}.yaml"
        else:
            message = f"was created in placement group {reserved_in}, the config names {named}"
            fix = f"set placement_group_name: {reserved_in}, or use a reservation created in {named}"
        self.add(ERROR, subject, message, fix)
        return [message]

    def _block_end(self, fleet_name: str, subject: str, end: datetime) -> None:
        """The Auto Scaling guide: "Scale in your Auto Scaling group to zero more than 30 minutes before the Capacity
        Block reservation end time", leaving the lifecycle action time to complete first
        (https://docs.aws.amazon.com/autoscaling/ec2/userguide/launch-template-capacity-blocks.html). The last
        scheduled action before the end must empty the fleet by end - 30 min - the termination hook's timeout."""
        fleet = self.config.fleets[fleet_name]
        now = self.clock()
        hook = scaling_config.termination_heartbeat(self.config.drain)
        deadline = end - timedelta(seconds=scaling_config.CAPACITY_BLOCK_RECLAIM_SECONDS + hook)
        events = sorted(scheduled_events(fleet, now, end), key=lambda event: event[0])
        shown_end, shown_deadline = _utc(end), _utc(deadline)
        fix = (f"add to fleets.{fleet_name}.schedule: {{name: block-end, start_time: \"{shown_deadline}\", min_size: 0, "
               "max_size: 0, desired_capacity: 0}")
        if not events or not events[-1][1].to_zero:
            self.add(ERROR, subject, f"the block ends {shown_end} and no scheduled action empties the fleet before "
                     f"then; EC2 reclaims its instances 30 minutes earlier, in-flight requests and all", fix)
        elif events[-1][0] > deadline:
            at, action = events[-1]
            self.add(ERROR, subject, f"scheduled action {action.name} empties the fleet at {_utc(at)}, after "
                     f"{shown_deadline} (the block ends {shown_end}; 30 minutes of reclaim and the {hook} s drain "
                     "must fit before)", fix.replace("block-end", action.name))
        else:
            at, action = events[-1]
            self.add(INFO, subject, f"emptied by {action.name} at {_utc(at)}, in time for the block's end {shown_end}")

    def schedule_times(self) -> None:
        """A one-time scheduled action in the past fails the deploy: "If you try to schedule the action in the past,
        Amazon EC2 Auto Scaling returns an error" (API_PutScheduledUpdateGroupAction, StartTime)."""
        now = self.clock()
        for name, fleet in self.config.fleets.items():
            for action in fleet.schedule:
                if action.start_time is not None and action.start_time.astimezone(timezone.utc) <= now:
                    self.add(ERROR, f"fleet {name} schedule {action.name}",
                             f"start_time {_utc(action.start_time)} has passed; Auto Scaling refuses an action in "
                             "the past, so the deploy would fail",
                             f"remove it from fleets.{name}.schedule in config/{self.config.name}.yaml, or move it")

    def placement_group(self) -> None:
        """The named group must exist here, be a cluster group, and be available."""
        name = self.config.placement_group_name
        try:
            found = self.clients.ec2.describe_placement_groups(GroupNames=[name]).get("PlacementGroups", [])
        except ClientError as err:
            if "InvalidPlacementGroup" not in str(err):
                raise
            found = []
        subject = f"placement group {name}"
        if not found:
            self.add(ERROR, subject, f"not found in {self.config.region}",
                     f"aws ec2 create-placement-group --group-name {name} --strategy cluster --region "
                     f"{self.config.region} (then create the reservation in it), or fix placement_group_name")
        elif found[0].get("Strategy") != "cluster" or found[0].get("State") != "available":
            self.add(ERROR, subject, f"is a {found[0].get('Strategy')} group, {found[0].get('State')}",
                     "name an available cluster placement group")
        else:
            self.add(INFO, subject, "cluster, available")

    def ami(self, subject: str, ami: Any) -> None:
        """A pinned image must exist; a parameter must resolve (INFO names the ID to pin)."""
        if ami.image_id:
            images = self.clients.ec2.describe_images(ImageIds=[ami.image_id]).get("Images", [])
            if images:
                self.add(INFO, subject, f"{ami.image_id} exists ({images[0].get('Name', '')})")
            else:
                self.add(ERROR, subject, f"{ami.image_id} not found in {self.config.region}",
                         "pin an AMI ID from this region")
            return
        try:
            value = self.clients.ssm.get_parameter(Name=ami.ssm_parameter)["Parameter"]["Value"]
        except ClientError as err:
            if "ParameterNotFound" not in str(err):
                raise
            self.add(ERROR, subject, f"parameter {ami.ssm_parameter} does not exist in {self.config.region}",
                     "set a parameter that exists here, or pin image_id")
            return
        self.add(INFO, subject, f"{ami.ssm_parameter} resolves to {value}",
                 f"pin it for production: image_id: {value}")

    def quotas(self) -> None:
        """On-Demand vCPU quotas against the most instances the fleets may run (max_count)."""
        needed = {group: 0 for group in VCPU_QUOTAS}
        needed["standard"] = CONTROL_VCPUS.get(self.config.control_host.instance_type, 4)
        for fleet in self.config.fleets.values():
            if fleet.capacity.type == "capacity-block":
                continue  # Capacity Blocks do not draw on the On-Demand quota
            known = catalog.WORKER_TYPES.get(fleet.instance_type)
            if known:
                # A warm pool instance runs while it boots (and the pool refills while the group is at max_count).
                warm = fleet.warm_pool.size if fleet.warm_pool else 0
                needed[quota_group(known.family)] += (fleet.ceiling + warm) * known.vcpus
        for family, vcpus in needed.items():
            if vcpus:
                self._quota(family, vcpus)

    def _quota(self, family: str, vcpus: int) -> None:
        code, name = VCPU_QUOTAS[family]
        subject = f"quota {code}"
        try:
            value = self.clients.service_quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
        except (ClientError, BotoCoreError, NotImplementedError) as err:
            if not isinstance(err, NotImplementedError) and self._not_run(subject, err):
                return
            # Unknown to the endpoint (e.g. an emulator): the deploy can still work.
            self.add(WARNING, subject, f"could not read '{name}': {err}",
                     "check it in the Service Quotas console before deploying")
            return
        if value < vcpus:
            self.add(ERROR, subject, f"'{name}' is {value:g} vCPUs, the fleets may need {vcpus}",
                     f"aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} "
                     f"--desired-value {vcpus} --region {self.config.region}")
        else:
            self.add(INFO, subject, f"'{name}' is {value:g} vCPUs, the fleets may need {vcpus}")

    def secret(self) -> None:
        """The Hugging Face token secret must exist before nodes boot (gated models)."""
        secret = self.config.model.hf_token_secret
        try:
            self.clients.secretsmanager.describe_secret(SecretId=secret)
        except ClientError as err:
            if "ResourceNotFound" not in str(err):
                raise
            self.add(ERROR, f"secret {secret}", "does not exist",
                     f"aws secretsmanager create-secret --name {secret} --secret-string hf_... "
                     f"--region {self.config.region}")
            return
        self.add(INFO, f"secret {secret}", "exists")


def scheduled_events(fleet: FleetConfig, start: datetime, end: datetime) -> list[tuple[datetime, Any]]:
    """When each of the fleet's scheduled actions fires in [start, end], as (UTC time, action)."""
    events: list[tuple[datetime, Any]] = []
    for action in fleet.schedule:
        if action.start_time is not None:
            at = action.start_time.astimezone(timezone.utc)
            if start <= at <= end:
                events.append((at, action))
        elif action.recurrence is not None:
            events += [(at, action) for at in cron.parse(action.recurrence).occurrences(
                start, end, action.time_zone or "UTC")]
    return events


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(findings: list[Finding]) -> str:
    """Findings, most severe first, each followed by its fix."""
    order = {ERROR: 0, WARNING: 1, INFO: 2}
    lines = []
    for finding in sorted(findings, key=lambda f: order[f.level]):
        lines.append(f"{finding.level:<8} {finding.subject}: {finding.message}")
        if finding.fix and finding.level != INFO:
            lines.append(f"{'':<8} fix: {finding.fix}")
        elif finding.fix:
            lines.append(f"{'':<8} note: {finding.fix}")
    return "\n".join(lines)


def as_dicts(findings: list[Finding]) -> list[dict[str, str]]:
    """Findings for --json."""
    return [asdict(f) for f in findings]
