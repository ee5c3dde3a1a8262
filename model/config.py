"""Per-environment configuration: pydantic models (structure and defaults) for `config/NAME.yaml`.

Cross-field rules live in `model/rules.py`; `model/loader.py` runs both and formats every problem at once.
Never imports aws_cdk: `dictl` reads the same files.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from model import catalog, engines, images, naming, proxies
from model.control_plane import DEFAULT_CONTROL_TYPE, ControlPlaneConfig
from model.routing_config import RoutingConfig
from model.scaling_config import DrainConfig, ScalingConfig, ScheduledActionConfig, WarmPoolConfig

# The default worker image: the default engine's newest catalog image (model/images.py).
NEURON_DLC = engines.get(engines.DEFAULT).default_image
# The host DLAMI the catalog names for the default image: the Ubuntu 24.04 Neuron base DLAMI, whatever the container's
# Ubuntu ("The host OS does not need to match the container OS", model/images.py DLC_233). The legacy 0.9.1 images
# name the 22.04 one, a parameter Neuron froze at its last 22.04 build when it stopped publishing 22.04 DLAMIs at
# 2.30.0 (aws-neuron-sdk release-notes/components/dlamis.rst L72-78). That build carries a newer driver than the
# 0.9.1 images' SDK 2.25 was released against; the legacy engine runs on it as far as Neuron's driver/runtime
# compatibility holds (UNVERIFIED on hardware).
# https://awsdocs-neuron.readthedocs-hosted.com/en/latest/deploy/environments/dlami.html
NEURON_BASE_DLAMI_PARAMETER = images.IMAGES[NEURON_DLC].host_dlami
AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"

# CloudWatch Logs accepts only these retention periods.
# https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutRetentionPolicy.html
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653)

SSM_PARAMETER_PATTERN = r"^/[A-Za-z0-9_./-]+$"
ROOT_DEVICE_PATTERN = r"^/dev/(sda1|xvda|nvme0n1)$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AmiConfig(_Model):
    """Where an instance's image comes from: an SSM parameter resolved by EC2 at launch, or a pinned ID."""

    ssm_parameter: str | None = Field(
        default=NEURON_BASE_DLAMI_PARAMETER,
        pattern=SSM_PARAMETER_PATTERN,
        description="Public or own SSM parameter holding an AMI ID; EC2 resolves it at each launch.",
    )
    image_id: str | None = Field(
        default=None,
        pattern=r"^ami-[0-9a-f]{8,17}$",
        description="A pinned AMI ID. Set this in production so a new DLAMI never reaches new instances unnoticed.",
    )
    root_device_name: str = Field(
        default="/dev/sda1",
        pattern=ROOT_DEVICE_PATTERN,
        description="The AMI's root device; a wrong name adds a volume instead of sizing the root one.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> AmiConfig:
        if "image_id" in self.model_fields_set and "ssm_parameter" in self.model_fields_set:
            if self.image_id and self.ssm_parameter:
                raise ValueError("set either image_id (pinned) or ssm_parameter, not both")
        if not self.image_id and not self.ssm_parameter:
            raise ValueError("set image_id or ssm_parameter")
        return self

    @property
    def launch_template_image(self) -> str:
        """ImageId for a launch template: `resolve:ssm:` makes EC2, not CloudFormation, read the parameter,
        so a new `latest` never changes the template and never replaces a running instance.
        https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/create-launch-template.html#use-an-ssm-parameter-instead-of-an-ami-id
        """
        return self.image_id or f"resolve:ssm:{self.ssm_parameter}"


class WorkerAmiConfig(AmiConfig):
    """Workers: by default the Neuron base DLAMI of the image's Ubuntu (filled in by DeploymentConfig)."""

    ssm_parameter: str | None = Field(
        default=None, pattern=SSM_PARAMETER_PATTERN,
        description="Public or own SSM parameter holding an AMI ID; EC2 resolves it at each launch. Default: "
                    "/aws/service/neuron/dlami/base/ubuntu-<the image's Ubuntu>/latest/image_id.")

    @model_validator(mode="after")
    def _one_source(self) -> WorkerAmiConfig:
        # No source at all is the image's unknown Ubuntu, which rules.py reports with its fix.
        if self.image_id and self.ssm_parameter:
            raise ValueError("set either image_id (pinned) or ssm_parameter, not both")
        return self


class ControlAmiConfig(AmiConfig):
    """Amazon Linux 2023 by default for the control host."""

    ssm_parameter: str | None = Field(
        default=AL2023_PARAMETER, pattern=SSM_PARAMETER_PATTERN,
        description="Public or own SSM parameter holding an AMI ID; EC2 resolves it at each launch. Default: the "
                    "latest Amazon Linux 2023.")
    root_device_name: str = Field(
        default="/dev/xvda", pattern=ROOT_DEVICE_PATTERN,
        description="The AMI's root device (/dev/xvda on Amazon Linux); a wrong name adds a volume instead of sizing "
                    "the root one.")


class NetworkConfig(_Model):
    """A new VPC (default) or an existing VPC and subnet, named by ID so synth needs no lookup."""

    vpc_id: str | None = Field(default=None, pattern=r"^vpc-[0-9a-f]{8,17}$",
                               description="An existing VPC (vpc-...) to deploy into, with subnet_id. Default: a new "
                                           "VPC.")
    subnet_id: str | None = Field(default=None, pattern=r"^subnet-[0-9a-f]{8,17}$",
                                  description="Existing private subnet for workers and the control host.")
    route_table_id: str | None = Field(default=None, pattern=r"^rtb-[0-9a-f]{8,17}$",
                                       description="Route table of subnet_id, for the S3 gateway endpoint.")
    vpc_cidr: str = Field(default="10.42.0.0/16", description="CIDR of the new VPC, or of the existing one.")
    nat_gateway: bool = Field(default=True, description="Egress for public ECR and Hugging Face (new VPC only).")
    vpc_endpoints: bool = Field(default=True, description="S3 gateway and an interface endpoint for every AWS API "
                                "a node calls at boot (ssm, ssmmessages, ec2messages, logs, ec2, autoscaling, "
                                "cloudformation, secretsmanager, ecr.api, ecr.dkr; monitoring with proxy: distack).")
    http_egress: bool = Field(default=True,
                              description="Allow TCP 80 out: Ubuntu's EC2 package mirrors serve signed packages over HTTP.")
    allowed_client_cidrs: tuple[str, ...] = Field(
        default=(),
        description="Who may call the proxy. Empty: only through `dictl tunnel` (SSM port forwarding).",
    )

    @property
    def existing(self) -> bool:
        """True when the deployment reuses a VPC instead of creating one."""
        return self.vpc_id is not None


class ModelConfig(_Model):
    """The served model and the vLLM limits shared by every endpoint."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description="Hugging Face id, e.g. org/name.")
    source: Literal["huggingface", "s3"] = Field(
        default="huggingface", description="s3: weights are synced from models/<id>/ in the artifacts bucket.")
    hf_token_secret: str | None = Field(default=None, pattern=r"^[A-Za-z0-9/_+=.@-]{1,512}$",
                                        description="Secrets Manager secret *name* holding the Hugging Face token.")
    parameters_billion: float | None = Field(default=None, gt=0,
                                             description="Model size; known models need not set it.")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Weight dtype for the weights-fit-HBM check: 2 bytes per parameter for "
                                        "bfloat16 and float16, 4 for float32.")
    max_model_len: int = Field(default=8192, ge=128, le=131072,
                               description="vLLM --max-model-len: longest prompt plus output, in tokens.")
    max_num_seqs: int = Field(default=8, ge=1, le=1024,
                              description="vLLM --max-num-seqs: sequences one endpoint serves at once.")
    # Moved to the engine's own section (model/engines/neuron_connector.py moved_settings); still read from here.
    kv_buffer_size: float | None = Field(
        default=None, gt=0, json_schema_extra={"deprecated": True},
        description="Deprecated: use neuron_connector.kv_buffer_size (this old place still loads, with a warning).")


class EndpointConfig(_Model):
    """One vLLM server on a worker: its device range (NeuronCores or GPUs) and port."""

    role: Literal["prefill", "decode"] | None = Field(default=None, description="Only in colocated fleets.")
    cores: str | None = Field(default=None, pattern=r"^\d+(-\d+)?$",
                              description="Trainium: logical NeuronCore range, e.g. 0-31. Default: the next TP cores.")
    gpus: str | None = Field(default=None, pattern=r"^\d+(-\d+)?$",
                             description="GPU fleets: GPU index range, e.g. 0-3 (CUDA_VISIBLE_DEVICES). Default: the "
                                         "next TP GPUs.")
    port: int | None = Field(default=None, ge=1024, le=65535, description="Default: 8000 + endpoint index.")


class ResolvedEndpoint(_Model):
    """An endpoint with every default filled in: what the node runs. first_core/last_core bound its device range:
    logical NeuronCores on Trainium, GPU indices on GPU types (node.env's DI_ACCELERATOR says which)."""

    index: int
    role: str
    first_core: int
    last_core: int
    port: int

    @property
    def cores(self) -> str:
        """The range as the node hands it to the server: NEURON_VISIBLE_DEVICES for engine nixl's vLLM Neuron plugin
        (aws-neuron-sdk vllm-neuron/docs/tutorials/tutorial-di-1p1d-xpyd.md@v2.32.0 L173: "NEURON_VISIBLE_DEVICES=0-3
        exposes exactly four host-level NeuronCores"), NEURON_RT_VISIBLE_CORES for the legacy neuron-connector (seed
        000's NEURON_RT_VISIBLE_CORES=0-31), docker's --gpus on GPU types."""
        return f"{self.first_core}-{self.last_core}"

    @property
    def core_count(self) -> int:
        """How many logical NeuronCores the range holds."""
        return self.last_core - self.first_core + 1


class CapacityConfig(_Model):
    """On-Demand, a targeted On-Demand Capacity Reservation, or a Capacity Block for ML."""

    type: Literal["on-demand", "reservation", "capacity-block"] = Field(
        default="on-demand", description="on-demand; reservation: a targeted On-Demand Capacity Reservation; "
                                         "capacity-block: a Capacity Block for ML. The last two need reservation_id.")
    reservation_id: str | None = Field(default=None, pattern=r"^cr-[0-9a-f]{8,17}$",
                                       description="The reservation's or Capacity Block's ID, cr-...")

    @property
    def targeted(self) -> bool:
        """Instances must launch into a named reservation (which fixes their placement)."""
        return self.type != "on-demand"


class FleetConfig(_Model):
    """Identical worker instances: one launch template and one Auto Scaling group."""

    role: Literal["prefill", "decode", "colocated", "standard"] = Field(
        description="prefill or decode (mode disaggregated); colocated: a prefill and a decode endpoint on each "
                    "instance; standard: plain vLLM endpoints (mode standard).")
    instance_type: str = Field(description="A Trainium or GPU type with EFA, e.g. trn2.48xlarge, p5.48xlarge.")
    count: int = Field(default=1, ge=1, le=64, description="Instances at deploy time.")
    max_count: int | None = Field(default=None, ge=1, le=256,
                                  description="Ceiling for `dictl scale`. Default: count.")
    tensor_parallel: int = Field(
        ge=1, le=128, description="Tensor-parallel degree: logical NeuronCores or GPUs per endpoint (vLLM "
                                  "--tensor-parallel-size). Endpoints x TP fit the instance: trn2.48xlarge 64 (LNC=2), "
                                  "trn1.32xlarge 32, p5.48xlarge 8 GPUs.")
    lnc: Literal[1, 2] | None = Field(default=None, description="Logical NeuronCore config (Trainium only); default "
                                                                "per type.")
    endpoints: tuple[EndpointConfig, ...] | None = Field(
        default=None,
        description="Default: one endpoint (colocated: one prefill then one decode) on consecutive core ranges.",
    )
    root_volume_gib: int = Field(default=512, ge=100, le=16384,
                                 description="Each worker's encrypted gp3 root volume, GiB.")
    capacity: CapacityConfig = Field(default=CapacityConfig(),
                                     description="How the instances are bought: on-demand, a reservation, a "
                                                 "Capacity Block.")
    # Elasticity (model/scaling_config.py; rules in model/scaling_rules.py).
    min_count: int | None = Field(
        default=None, ge=0, le=256,
        description="Fewest instances the group keeps (its MinSize); dictl scale and the scaling policy stay at or "
                    "above it. Default: count.")
    scaling: ScalingConfig | None = Field(
        default=None, description="Target tracking on the role's proxy signal (prefill, decode and standard "
                                  "fleets). An autoscaled group starts at min_count, and a deploy never resets it.")
    schedule: tuple[ScheduledActionConfig, ...] = Field(
        default=(), description="Scheduled actions that set the group's min/max/desired size, e.g. zero at night; "
                                "a Capacity Block fleet needs one that empties it before the block ends.")
    warm_pool: WarmPoolConfig | None = Field(
        default=None, description="Stopped, already booted instances for a faster scale-out (not with Capacity "
                                  "Blocks).")

    @property
    def floor(self) -> int:
        """MinSize of the Auto Scaling group."""
        return self.count if self.min_count is None else self.min_count

    @property
    def elastic(self) -> bool:
        """Something other than a deploy sizes the group (a policy or a schedule): the template then leaves
        DesiredCapacity out, so a deploy never resets it."""
        return self.scaling is not None or bool(self.schedule)

    @property
    def initial_size(self) -> int:
        """Instances at creation: count, or min_count for an autoscaled group (which CloudFormation creates at its
        minimum when DesiredCapacity is absent)."""
        return self.floor if self.elastic else self.count

    @property
    def ceiling(self) -> int:
        """MaxSize of the Auto Scaling group."""
        return max(self.max_count or self.count, self.count)

    @cached_property
    def resolved_endpoints(self) -> tuple[ResolvedEndpoint, ...]:
        """Endpoints with roles, core ranges and ports filled in (ranges are validated in rules.py)."""
        declared = self.endpoints
        if declared is None:
            roles = ["prefill", "decode"] if self.role == "colocated" else [self.role]
            declared = tuple(EndpointConfig(role=r if self.role == "colocated" else None) for r in roles)
        resolved = []
        for index, endpoint in enumerate(declared):
            devices = endpoint.gpus if endpoint.gpus is not None else endpoint.cores
            if devices is None:
                first, last = index * self.tensor_parallel, (index + 1) * self.tensor_parallel - 1
            else:
                first, _, last_text = devices.partition("-")
                first, last = int(first), int(last_text or first)
            resolved.append(ResolvedEndpoint(
                index=index,
                role=endpoint.role or self.role,
                first_core=first,
                last_core=last,
                port=endpoint.port if endpoint.port is not None else naming.VLLM_BASE_PORT + index,
            ))
        return tuple(resolved)


class ControlHostConfig(_Model):
    """The small host that runs etcd and the proxy."""

    instance_type: str = Field(default=DEFAULT_CONTROL_TYPE, pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$",
                               description="EC2 type of the control hosts (no Neuron needed), one whose traffic "
                                           "Nitro encrypts in transit (model/control_plane.py), e.g. m7i.xlarge.")
    root_volume_gib: int = Field(default=100, ge=30, le=16384,
                                 description="Holds the DLC image the proxy runs from (tens of GiB).")
    etcd_volume_gib: int = Field(default=20, ge=1, le=16384,
                                 description="Encrypted gp3 volume for etcd's data, GiB; retained when the stack is "
                                             "deleted.")
    private_ip: str | None = Field(default=None, pattern=r"^\d{1,3}(\.\d{1,3}){3}$",
                                   description="Fixed address of the control host; default: chosen once by EC2.")
    ami: ControlAmiConfig = Field(default=ControlAmiConfig(),
                                  description="The control host's AMI. Default: the latest Amazon Linux 2023.")


class BootstrapConfig(_Model):
    """How long CloudFormation waits for nodes to report their bootstrap."""

    timeout_minutes: int = Field(default=60, ge=5, le=720,
                                 description="Minutes CloudFormation waits for each node's bootstrap signal before "
                                             "the deploy fails.")


class MonitoringConfig(_Model):
    """The deployment's CloudWatch dashboard and alarms (stacks/components/monitoring.py): where alarms go and
    when they fire. The proxy-metric alarms (no usable pair, 5xx rate, TTFT) exist only with proxy: distack."""

    alarm_email: str | None = Field(
        default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
        description="Subscribe this address to the deployment's alarm topic (SNS sends a confirmation mail first). "
                    "Empty: the topic has no subscription; subscribe anything to its ARN (output AlarmTopicArn).")
    ttft_p99_slo_ms: float = Field(
        default=2000, gt=0, le=600_000,
        description="Alarm when the proxy's time-to-first-token p99 stays above this many milliseconds for three "
                    "5-minute periods in a row.")
    no_pair_minutes: int = Field(
        default=5, ge=1, le=1440,
        description="Alarm when the proxy has had no healthy prefill or decode worker (standard mode: no healthy "
                    "endpoint), or /metrics has not answered, for this many minutes in a row.")
    server_error_percent: float = Field(
        default=5, gt=0, le=100,
        description="Alarm when more than this share of the proxy's answers in 5 minutes are 5xx.")


class _Deployment(_Model):
    """One environment: everything `cdk deploy DiStack -c env=NAME` builds."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="DiStack environment")

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,19}$", description="Must equal the file name; stack di-NAME.")
    region: str = Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$",
                        description="AWS Region of the stack and every instance, e.g. us-east-2.")
    account: str | None = Field(default=None, pattern=r"^\d{12}$",
                                description="12-digit AWS account ID the stack is bound to. Default: the account "
                                            "of the credentials that deploy.")
    availability_zone: str = Field(description="One AZ for all workers (EFA traffic cannot leave a subnet).")
    engine: Literal[engines.NAMES] = Field(  # type: ignore[valid-type]
        default=engines.DEFAULT,
        description="KV-transfer engine. nixl: vLLM's NixlConnector over NIXL/EFA (Trn2/Trn3 with the Neuron plugin, "
                    "GPU types with upstream vLLM); lmcache: LMCache over NIXL (GPU types, seed 004); "
                    "neuron-connector: the legacy tutorial's NeuronConnector + etcd (0.9.1 images).")
    mode: Literal["disaggregated", "standard"] = Field(
        default="disaggregated", description="disaggregated: prefill and decode endpoints with KV transfer; "
                                             "standard: plain vLLM endpoints (role standard) behind DiStack's proxy, "
                                             "for comparison runs.")
    proxy: Literal[proxies.NAMES] = Field(  # type: ignore[valid-type]
        default=proxies.DEFAULT,
        description="distack: DiStack's own proxy (the default, and the only one with engine nixl or in standard mode); "
                    "neuron: the 0.9.1 image's neuron-proxy-server (the default with engine neuron-connector in "
                    "disaggregated mode).")
    proxy_api_key_secret: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9/_+=.@-]{1,512}$",
        description="Secrets Manager secret *name* holding the key clients send as `Authorization: Bearer KEY` "
                    "(proxy: distack). Empty: no key.")
    image: str = Field(default=NEURON_DLC,
                       pattern=r"^[a-z0-9.-]+(:\d+)?/[a-z0-9._/-]+:[A-Za-z0-9._-]+(@sha256:[0-9a-f]{64})?$",
                       description="Worker container image, registry/repository:tag, optionally pinned as "
                                   "...:tag@sha256:DIGEST. Default: the engine's newest image in model/images.py.")
    image_unlisted: bool = Field(
        default=False,
        description="Accept an image the catalog (model/images.py) does not list: synth then warns, the engine's "
                    "image check is skipped, and the worker AMI follows the tag's -ubuntuXX.YY suffix (or set "
                    "worker_ami).")
    network: NetworkConfig = Field(default=NetworkConfig(),
                                   description="A new VPC (default) or an existing one, and who may call the proxy.")
    model: ModelConfig = Field(description="The served model (Hugging Face id) and the vLLM limits every endpoint "
                                           "shares.")
    fleets: dict[str, FleetConfig] = Field(
        min_length=1, description="Worker fleets by name (lowercase, e.g. prefill, decode): each one instance type, "
                                  "count and endpoint layout, and one Auto Scaling group.")
    worker_ami: WorkerAmiConfig = Field(
        default=WorkerAmiConfig(), description="The workers' AMI. Default: the Neuron base DLAMI of the image's "
                                               "Ubuntu (an SSM parameter); pin image_id in production.")
    control_host: ControlHostConfig = Field(default=ControlHostConfig(),
                                            description="The small host that runs etcd and the proxy.")
    placement_group: bool | None = Field(
        default=None, description="Cluster placement group; default on unless a fleet targets a reservation.")
    placement_group_name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+=@-]{0,254}$",
        description="An existing cluster placement group to launch into instead of a new one, e.g. the one an "
                    "On-Demand Capacity Reservation was created in. Capacity Block fleets never use a placement "
                    "group.")
    drain: DrainConfig = Field(default_factory=DrainConfig,
                               description="How long a leaving worker waits for its in-flight requests.")
    log_retention_days: int = Field(
        default=30, description="Days CloudWatch keeps the deployment's log groups; one of the values CloudWatch "
                                "accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, ...).")
    bootstrap: BootstrapConfig = Field(default=BootstrapConfig(),
                                       description="How long CloudFormation waits for the nodes' bootstrap.")
    control_plane: ControlPlaneConfig = Field(default_factory=ControlPlaneConfig,
                                              description="Control hosts, TLS and the load balancer clients call.")
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig,
                                         description="Dashboard and alarms: alarm email, TTFT SLO, thresholds.")
    routing: RoutingConfig = Field(default_factory=RoutingConfig,
                                   description="How DiStack's proxy chooses workers: by cached prefix (approximate, "
                                               "the default), the PD decider, stream migration (docs/routing.md).")

    @model_validator(mode="before")
    @classmethod
    def _engine_defaults(cls, data: Any) -> Any:
        """Defaults that follow the engine and image: the engine's image, its proxy, the image's host DLAMI.

        neuron-proxy-server only pairs prefill with decode workers, so standard mode defaults to DiStack's proxy.
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        name = data.get("engine", engines.DEFAULT)
        engine = engines.ENGINES.get(name) if isinstance(name, str) else None
        if engine is None:
            return data  # pydantic reports the unknown engine
        accelerator = _accelerator_of(data.get("fleets"))
        if accelerator == engine.accelerators[0] or not images.for_engine(engine.name, accelerator):
            data.setdefault("image", engine.default_image)
        else:
            data.setdefault("image", engine.default_image_for(accelerator))
        if "proxy" not in data:
            data["proxy"] = proxies.DISTACK.name if data.get("mode") == "standard" else engine.proxies[0]
        ami = data.get("worker_ami")
        if ami is None or (isinstance(ami, dict) and not ami.get("image_id") and not ami.get("ssm_parameter")):
            parameter = images.worker_ami_parameter(data["image"], accelerator) \
                if isinstance(data["image"], str) else None
            if parameter is not None:
                data["worker_ami"] = {**(ami or {}), "ssm_parameter": parameter}
        return data

    @property
    def accelerator(self) -> str:
        """What the workers' devices are (catalog.NEURON or catalog.GPU): the first known fleet type's accelerator
        (rules.py refuses fleets that mix them)."""
        return _accelerator_of(self.fleets)

    @property
    def proxy_kind(self) -> proxies.ProxyKind:
        """The proxy the control host runs (model/proxies.py)."""
        return proxies.get(self.proxy)

    @property
    def runs_distack_proxy(self) -> bool:
        """DiStack's own proxy serves this deployment: its package, metrics, shipper and API key exist."""
        return self.proxy_kind.distack

    @property
    def engine_module(self) -> engines.Engine:
        """The engine's rules, node values and summary (model/engines/<engine>.py)."""
        return engines.get(self.engine)

    @property
    def image_entry(self) -> images.Image | None:
        """The image's catalog entry (None when unlisted)."""
        return images.find(self.image)

    @property
    def dlami_ubuntu(self) -> str | None:
        """The Ubuntu release of the Neuron base DLAMI the workers boot when worker_ami is the image's catalog host
        (the default); None on GPU fleets, for an unlisted image, or when worker_ami names another AMI."""
        entry = self.image_entry
        ami = self.worker_ami
        if self.accelerator != catalog.NEURON or entry is None or ami.image_id is not None:
            return None
        return entry.host_ubuntu if ami.ssm_parameter == entry.host_dlami else None

    @property
    def uses_placement_group(self) -> bool:
        """Capacity Blocks and targeted reservations fix placement themselves, so they go without one, unless the
        reservation was created in a cluster placement group that the config names."""
        if self.placement_group is not None:
            return self.placement_group
        if self.placement_group_name is not None:
            return True
        return not any(f.capacity.targeted for f in self.fleets.values())

    def fleet_placement_group(self, fleet_name: str) -> str | None:
        """Which group a fleet launches into: "new" (the stack's own), the named existing one, or None. Capacity
        Blocks need none: "there is no need to use a cluster placement group with a Capacity Block"
        (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/capacity-blocks-using.html)."""
        if not self.uses_placement_group or self.fleets[fleet_name].capacity.type == "capacity-block":
            return None
        return self.placement_group_name or "new"

    @property
    def stack_name(self) -> str:
        """CloudFormation stack name."""
        return naming.stack_name(self.name)


def _engine_sections() -> dict[str, Any]:
    """One section per engine with settings, from the engine registry (model/engines/<name>.py settings_key and
    settings_model); rules.py refuses a section of another engine."""
    return {engine.settings_key: (engine.settings_model, Field(default_factory=engine.settings_model,
                                                               description=f"Settings of engine {engine.name}."))
            for engine in engines.ENGINES.values() if engine.settings_key and engine.settings_model}


DeploymentConfig = create_model("DeploymentConfig", __base__=_Deployment, __module__=__name__,
                                __doc__=_Deployment.__doc__, **_engine_sections())


def _accelerator_of(fleets: Any) -> str:
    """The accelerator of the first fleet whose instance type the catalog knows (raw or validated fleets); Neuron
    when none is known."""
    if isinstance(fleets, dict):
        for fleet in fleets.values():
            name = fleet.get("instance_type") if isinstance(fleet, dict) else getattr(fleet, "instance_type", None)
            itype = catalog.WORKER_TYPES.get(name) if isinstance(name, str) else None
            if itype is not None:
                return itype.accelerator
    return catalog.NEURON
