"""DiStack: wires the components of one deployment; owns tags, outputs and every cdk-nag acknowledgment."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_logs as logs
from constructs import Construct

from model import control_plane, naming, node_values, scaling_config, serving_time
from stacks import userdata
from stacks.components.artifacts import Artifacts
from stacks.components.control_host import ControlHost, ControlState
from stacks.components.edge import Edge
from stacks.components.etcd_trust import EtcdTrust
from stacks.components.image_cache import ImageCache
from stacks.components.monitoring import Monitoring
from stacks.components.network import Network
from stacks.components.node_role import NodeRole
from stacks.components.ops_documents import OpsDocuments
from stacks.components.placement import ClusterPlacement
from stacks.components.security import Security
from stacks.components.worker_fleet import FleetLifecycle, FleetPlacement, WorkerFleet
from model.config import DeploymentConfig
from stacks.observability import kv_alarms
from stacks.observability.node_metrics import NodeMetrics
from stacks import nag


RETENTION = {
    1: logs.RetentionDays.ONE_DAY, 3: logs.RetentionDays.THREE_DAYS, 5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK, 14: logs.RetentionDays.TWO_WEEKS, 30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS, 90: logs.RetentionDays.THREE_MONTHS, 120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS, 180: logs.RetentionDays.SIX_MONTHS, 365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS, 545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS, 1096: logs.RetentionDays.THREE_YEARS, 1827: logs.RetentionDays.FIVE_YEARS,
    2192: logs.RetentionDays.SIX_YEARS, 2557: logs.RetentionDays.SEVEN_YEARS, 2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS, 3653: logs.RetentionDays.TEN_YEARS,
}


# Workers stage compiled artifacts (never compiled/ itself, which every worker loads: `dictl compile` promotes a
# checked staging copy with the operator's credentials) and publish collected logs; the control host, benchmark
# results and logs. Each instance only in its own folder, PREFIX/ROLE-ID:INSTANCE-ID/ (NodeRole.allow_own_writes).
# Neither writes Run Command output: the SSM Agent would write it as commands/COMMAND-ID/INSTANCE-ID/ with the
# instance role (aws/amazon-ssm-agent@1c217c89 agent/runcommand/utils.go parseSendCommandMessage), a key no
# per-instance grant can cover, so dictl sends no S3 output location and reads output from SSM (ops/commands.py).
WRITE_PREFIXES = {
    "WorkerRole": [naming.BUCKET_PREFIX_STAGING_COMPILED, naming.BUCKET_PREFIX_LOGS],
    "ControlRole": [naming.BUCKET_PREFIX_BENCH, naming.BUCKET_PREFIX_LOGS],
}


class DiStack(cdk.Stack):
    """Disaggregated inference on Trainium: network, security, workers, control host, artifacts, runbooks.

    Exposes ``deployment``, ``fleets`` (name -> WorkerFleet), ``control_host``, ``artifacts``, ``monitoring``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: DeploymentConfig, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, stack_name=config.stack_name,
                         description=f"DiStack {config.name}: disaggregated LLM inference on Trainium", **kwargs)
        self.deployment = config.name
        cdk.Tags.of(self).add(naming.TAG_DEPLOYMENT, config.name)
        retention = RETENTION[config.log_retention_days]

        network = Network(self, "Network", network=config.network, availability_zone=config.availability_zone,
                          log_retention=retention, metrics_endpoint=config.runs_distack_proxy)
        security = Security(self, "Security", vpc=network.vpc, network=config.network,
                            vllm_ports=[ep.port for f in config.fleets.values() for ep in f.resolved_endpoints],
                            engine_control_ports=config.engine_module.control_ports)
        self.artifacts = Artifacts(self, "Artifacts", env_name=config.name, retention=retention,
                                   hf_token_secret_name=config.model.hf_token_secret,
                                   proxy_api_key_secret_name=config.proxy_api_key_secret)
        groups = self.artifacts.log_groups
        bucket = self.artifacts.bucket
        roles = {}
        for role_id, prefixes in WRITE_PREFIXES.items():
            # The Hugging Face token is the workers' alone: they download the model; the control host's scripts,
            # `dictl bench` included (its tokenizer is public), never read it.
            roles[role_id] = NodeRole(self, role_id, bucket=bucket, write_prefixes=prefixes,
                                      log_groups=list(groups.values()),
                                      secret=self.artifacts.hf_token_secret if role_id == "WorkerRole" else None)
            nag.acknowledge_node_role(roles[role_id], bucket, prefixes)
        worker_role, control_role = roles["WorkerRole"], roles["ControlRole"]
        self.node_roles = (worker_role, control_role)
        nag.acknowledge_control_role(control_role, publishes_metrics=config.runs_distack_proxy)
        for role in (worker_role, control_role):
            role.allow_lifecycle(config.name)
            nag.acknowledge_worker_lifecycle(role)
        nag.acknowledge_bucket(bucket)
        nag.acknowledge_scaling_groups(self)

        scripts = userdata.scripts_asset(self, "NodeScripts")
        for role in roles.values():
            role.allow_bootstrap(scripts)
        node_metrics = NodeMetrics(self, "NodeMetrics", config=config, retention=retention)
        worker_role.allow_metrics_agent(node_metrics.worker_parameters(), node_metrics.log_group)
        kv_alarms.allow_efa_metrics(worker_role, config)
        control_role.allow_metrics_agent(node_metrics.control_parameters(), node_metrics.log_group)

        hosts = control_plane.control_hosts(config)
        state = ControlState(self, "ControlState", control=config.control_host, hosts=hosts, subnet=network.subnet,
                             security_group=security.control_group)
        edge = Edge(self, "Edge", config=config, vpc=network.vpc, subnet=network.subnet,
                    control_group=security.control_group, worker_group=security.worker_group)
        nag.acknowledge_edge(edge)
        if edge.generated_api_key is not None:
            edge.generated_api_key.grant_read(control_role.role)
        etcd_trust = None
        if control_plane.etcd_trust_needed(config):
            # Clients over TLS, peers over TLS, or both; the registrar's secret exists only for clients.
            etcd_trust = EtcdTrust(self, "EtcdTrust", deployment=config.name,
                                   clients=control_plane.etcd_secured(config))
            etcd_trust.grant_control(control_role.role)
            etcd_trust.grant_workers(worker_role.role)
            nag.acknowledge_etcd_trust(etcd_trust)
        proxy_package = proxy_wheelhouse = None
        if config.runs_distack_proxy:
            proxy_package = userdata.proxy_package_asset(self, "ProxyPackage")
            control_role.allow_download(proxy_package)
            proxy_wheelhouse = userdata.proxy_wheelhouse_asset(self, "ProxyWheelhouse")
            control_role.allow_download(proxy_wheelhouse)
            control_role.allow_metrics(naming.PROXY_METRICS_NAMESPACE)
            if self.artifacts.proxy_api_key_secret is not None:
                control_role.allow_secret(self.artifacts.proxy_api_key_secret)
        # etcd (and the legacy proxy's image) from this account's registry, never from quay.io or public.ecr.aws.
        image_cache = ImageCache(self, "ImageCache", deployment=config.name,
                                 images=node_values.control_images(config))
        image_cache.grant_pull(control_role.role)
        nag.acknowledge_image_cache(control_role, list(image_cache.prefixes.values()))
        refs = node_values.DeploymentRefs(
            stack_name=self.stack_name, bucket_name=bucket.bucket_name,
            # Workers' etcd: through the load balancer to every member, or the one control host's fixed address.
            control_address=edge.load_balancer.load_balancer_dns_name if edge.etcd_endpoint
            else state.members[0].address,
            node_log_group=groups["nodes"].log_group_name, container_log_group=groups["containers"].log_group_name,
            scripts_url=scripts.s3_object_url,
            proxy_package_url=proxy_package.s3_object_url if proxy_package else "",
            proxy_wheelhouse_url=proxy_wheelhouse.s3_object_url if proxy_wheelhouse else "",
            ecr_registry=image_cache.registry,
            etcd_ca_secret=etcd_trust.ca_secret.secret_arn if etcd_trust else "",
            etcd_client_secret=etcd_trust.client_secret.secret_arn if etcd_trust and etcd_trust.client_secret else "")
        timeout = config.bootstrap.timeout_minutes
        control_signal = userdata.SignalTarget()
        control_tags = self._role_tags(naming.ROLE_CONTROL, naming.ROLE_CONTROL)
        cdk.Tags.of(state).add(naming.TAG_ROLE, naming.ROLE_CONTROL)
        control_env = node_values.control_values(
            config, refs, signal_resource=control_signal.logical_id,
            members=[(m.network_interface.ref, m.etcd_volume.volume_id, m.address) for m in state.members],
            api_key_secret=edge.generated_api_key.secret_arn if edge.generated_api_key is not None else None)
        self.control_host = ControlHost(
            self, "ControlHost", control=config.control_host, state=state, node_role=control_role,
            user_data=userdata.render(control_env, node_values.proxy_values(
                config, control_env, worker_networks=network.worker_networks)),
            tags=control_tags, target_group_arns=edge.target_group_arns)
        control_signal.bind(self.control_host.auto_scaling_group, count=hosts, timeout_minutes=timeout)
        self.edge = edge

        # The stack's own cluster placement group, unless the config names an existing one (where an On-Demand
        # Capacity Reservation may have been created) or no fleet uses one.
        choices = {name: config.fleet_placement_group(name) for name in config.fleets}
        placement_group = ClusterPlacement(self, "PlacementGroup") if "new" in choices.values() else None
        self.fleets: dict[str, WorkerFleet] = {}
        for name, fleet in config.fleets.items():
            tags = self._role_tags(fleet.role, name)
            signal = userdata.SignalTarget()
            group = placement_group.group_name if choices[name] == "new" and placement_group else choices[name]
            self.fleets[name] = WorkerFleet(
                self, f"{naming.pascal(name)}Fleet", fleet=fleet, ami=config.worker_ami,
                placement=FleetPlacement(subnet_id=network.subnet_id,
                                         security_group_id=security.worker_group.security_group_id,
                                         placement_group_name=group),
                instance_profile=worker_role.instance_profile,
                user_data=userdata.render(node_values.worker_values(config, name, refs,
                                                                    signal_resource=signal.logical_id)),
                tags=tags, lifecycle=_lifecycle(config, name))
            group_resource = self.fleets[name].auto_scaling_group
            signal.bind(group_resource, count=max(fleet.initial_size, 1), timeout_minutes=timeout)
            if fleet.initial_size == 0:
                # A group created empty (e.g. a Capacity Block fleet before its block starts) has nothing to wait for.
                group_resource.cfn_options.creation_policy = None
            for key, value in tags.items():
                cdk.Tags.of(self.fleets[name].auto_scaling_group).add(key, value)
        for key, value in control_tags.items():
            cdk.Tags.of(self.control_host.auto_scaling_group).add(key, value)

        OpsDocuments(self, "OpsDocuments", env_name=config.name)
        self.monitoring = Monitoring(
            self, "Monitoring", config=config, control_group_name=self.control_host.auto_scaling_group.ref,
            fleet_group_names={name: fleet.auto_scaling_group.ref for name, fleet in self.fleets.items()},
            node_log_group=groups["nodes"],
            pool_alarms_after=[fleet.auto_scaling_group for fleet in self.fleets.values()])
        self._outputs(config, edge.proxy_url, refs.control_address)

    def _role_tags(self, role: str, fleet: str) -> dict[str, str]:
        return {naming.TAG_DEPLOYMENT: self.deployment, naming.TAG_ROLE: role, naming.TAG_FLEET: fleet}

    def _outputs(self, config: DeploymentConfig, proxy_url: str, etcd_host: str) -> None:
        groups = self.artifacts.log_groups
        outputs = {
            naming.OUTPUT_PROXY_URL: (proxy_url, "OpenAI-compatible endpoint (the internal load balancer)"),
            naming.OUTPUT_ETCD_ADDRESS: (f"{etcd_host}:{naming.ETCD_CLIENT_PORT}", "Worker registry (etcd)"),
            naming.OUTPUT_BUCKET: (self.artifacts.bucket.bucket_name, "Compiled models, weights, bench, logs"),
            naming.OUTPUT_NODE_LOG_GROUP: (groups["nodes"].log_group_name, "Bootstrap and node script logs"),
            naming.OUTPUT_CONTAINER_LOG_GROUP: (groups["containers"].log_group_name, "vLLM, proxy and etcd logs"),
            naming.OUTPUT_SSM_LOG_GROUP: (groups["commands"].log_group_name, "dictl command output"),
            naming.OUTPUT_CONTROL_INSTANCE_GROUP: (self.control_host.auto_scaling_group.ref, "Control host group"),
            naming.OUTPUT_DASHBOARD_URL: (self.monitoring.dashboard_url, "CloudWatch dashboard of this deployment"),
            naming.OUTPUT_ALARM_TOPIC: (self.monitoring.topic.topic_arn, "SNS topic every alarm notifies"),
        }
        outputs.update(self._role_id_outputs())
        for name, fleet in self.fleets.items():
            outputs[naming.fleet_output(name)] = (fleet.auto_scaling_group.ref, f"Auto Scaling group of {name}")
        for key, (value, description) in outputs.items():
            cdk.CfnOutput(self, key, value=value, description=description)


    def _role_id_outputs(self) -> dict[str, tuple[str, str]]:
        """The node roles' IDs: the first half of the user ID in every key a node writes, which dictl checks before
        it takes an object as a node's (model/write_scope.py)."""
        return {naming.OUTPUT_NODE_ROLE_IDS: (cdk.Fn.join(",", [role.role.role_id for role in self.node_roles]),
                                              "Role IDs of the worker and control roles (ROLE-ID in node keys)")}


def _lifecycle(config: DeploymentConfig, fleet_name: str) -> FleetLifecycle:
    """The fleet's hook timeouts: launch from the estimated time to serving of a new (cold) worker, termination from
    the drain wait (model/scaling_config.py)."""
    try:
        serving: float | None = serving_time.estimate(config, fleet_name, warm=False).total_seconds
    except ValueError:
        serving = None  # an unknown model size (the rules report it): the hook waits as long as AWS allows
    return FleetLifecycle(
        deployment=config.name,
        launch_timeout_seconds=scaling_config.launch_heartbeat(serving, config.drain),
        termination_timeout_seconds=scaling_config.termination_heartbeat(config.drain))
