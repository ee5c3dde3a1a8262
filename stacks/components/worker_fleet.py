"""A worker fleet: an EFA launch template and an Auto Scaling group of identical Trainium instances, with the
lifecycle hooks every worker leaves and joins through, and the fleet's scaling policy, schedule and warm pool."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timezone
from typing import Mapping

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from model import catalog, naming, serving_time
from stacks.components import launch_template as lt
from stacks.components.monitoring import group_metrics_collection
from model.config import AmiConfig, FleetConfig
from model.scaling_config import INSTANCE_WARMUP_SECONDS, ROLE_SIGNALS, ScheduledActionConfig


@dataclass(frozen=True)
class FleetPlacement:
    """Where a fleet's instances go: one subnet, the worker group, and the cluster placement group if any."""

    subnet_id: str
    security_group_id: str
    placement_group_name: str | None


@dataclass(frozen=True)
class FleetLifecycle:
    """What the group needs beyond the fleet's own settings: whose signal it follows and how long its hooks wait."""

    deployment: str
    launch_timeout_seconds: int
    termination_timeout_seconds: int


class WorkerFleet(Construct):
    """Prefill, decode, colocated or standard workers.

    The group has no rolling or replacing UpdatePolicy on purpose: a new launch-template version (new AMI, new user
    data) never replaces serving instances behind the operator's back; `dictl rollout` does that health-gated.

    Exposes ``launch_template``, ``auto_scaling_group``, ``scaling_policy``, ``scheduled_actions``, ``warm_pool``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, fleet: FleetConfig, ami: AmiConfig,
                 placement: FleetPlacement, instance_profile: iam.InstanceProfile, user_data: str,
                 tags: Mapping[str, str], lifecycle: FleetLifecycle) -> None:
        super().__init__(scope, construct_id)
        itype = catalog.WORKER_TYPES[fleet.instance_type]
        self.launch_template = ec2.CfnLaunchTemplate(
            self, "LaunchTemplate",
            launch_template_data=ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(
                image_id=ami.launch_template_image,
                instance_type=itype.name,
                iam_instance_profile=ec2.CfnLaunchTemplate.IamInstanceProfileProperty(
                    arn=instance_profile.instance_profile_arn),
                network_interfaces=lt.efa_network_interfaces(
                    itype, subnet_id=placement.subnet_id, security_group_ids=[placement.security_group_id]),
                metadata_options=lt.metadata_options(),
                block_device_mappings=[_root_volume(fleet, ami)],
                ebs_optimized=True,
                monitoring=ec2.CfnLaunchTemplate.MonitoringProperty(enabled=True),
                user_data=cdk.Fn.base64(user_data),
                tag_specifications=lt.tag_specifications(tags),
                **_capacity(fleet),
            ),
        )
        self.auto_scaling_group = autoscaling.CfnAutoScalingGroup(
            self, "Group",
            min_size=str(fleet.floor),
            max_size=str(fleet.ceiling),
            # A deploy sets DesiredCapacity whenever the template has it, resetting what a policy or a schedule
            # chose; left out, the group starts at MinSize ("If you do not specify a desired capacity when creating
            # the stack, the default is the minimum size of the group") and keeps its size on updates
            # (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-autoscaling-autoscalinggroup.html#cfn-autoscaling-autoscalinggroup-desiredcapacity,
            # https://github.com/aws/aws-cdk/issues/5215). A fixed fleet keeps count, which a deploy restores.
            desired_capacity=None if fleet.elastic else str(fleet.count),
            vpc_zone_identifier=[placement.subnet_id],
            placement_group=placement.placement_group_name,
            launch_template=autoscaling.CfnAutoScalingGroup.LaunchTemplateSpecificationProperty(
                launch_template_id=self.launch_template.ref,
                version=self.launch_template.attr_latest_version_number),
            # Scale-in must not pick a worker that is serving while another is still starting.
            termination_policies=["NewestInstance"],
            health_check_type="EC2",
            health_check_grace_period=300,
            metrics_collection=group_metrics_collection(),
            # The launch hook holds a new instance out of service until it serves, so the warm-up only covers the
            # signal catching up (model/scaling_config.py).
            default_instance_warmup=INSTANCE_WARMUP_SECONDS,
            lifecycle_hook_specification_list=lifecycle_hooks(lifecycle),
        )
        # A scheduled action changes MinSize/MaxSize/DesiredCapacity; without this policy a deploy "always sets the
        # group size property values ... to the values that are defined in the AWS::AutoScaling::AutoScalingGroup
        # resource of your template, even if a scheduled action is in effect"; with it, only values changed in the
        # template are applied (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-attribute-updatepolicy.html).
        # Only where a schedule exists, the case the policy is documented for: a fixed fleet keeps being reset to
        # count by a deploy, as dictl scale says.
        if fleet.schedule:
            self.auto_scaling_group.cfn_options.update_policy = cdk.CfnUpdatePolicy(
                auto_scaling_scheduled_action=cdk.CfnAutoScalingScheduledAction(
                    ignore_unmodified_group_size_properties=True))
        group_name = self.auto_scaling_group.ref
        self.scaling_policy = _target_tracking(self, fleet, lifecycle.deployment, group_name)
        self.scheduled_actions = [_scheduled_action(self, action, group_name) for action in fleet.schedule]
        self.warm_pool = _warm_pool(self, fleet, group_name)


HookSpec = autoscaling.CfnAutoScalingGroup.LifecycleHookSpecificationProperty


def lifecycle_hooks(lifecycle: FleetLifecycle) -> list[HookSpec]:
    """The hooks the node completes itself (it reads its target state from IMDS; no notification target).

    Declared on the group, so they exist before its first instance launches and the instances of the stack's
    creation join and leave like every later one
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-properties-autoscaling-autoscalinggroup-lifecyclehookspecification.html).
    Launch: ABANDON on timeout, so an instance that never became ready is terminated and replaced rather than
    counted as capacity. Termination: CONTINUE, so an instance whose node died still leaves at the end of the drain.
    """
    return [
        HookSpec(lifecycle_hook_name=naming.LAUNCH_HOOK, lifecycle_transition="autoscaling:EC2_INSTANCE_LAUNCHING",
                 default_result="ABANDON", heartbeat_timeout=lifecycle.launch_timeout_seconds),
        HookSpec(lifecycle_hook_name=naming.TERMINATION_HOOK,
                 lifecycle_transition="autoscaling:EC2_INSTANCE_TERMINATING",
                 default_result="CONTINUE", heartbeat_timeout=lifecycle.termination_timeout_seconds),
    ]


def _target_tracking(scope: Construct, fleet: FleetConfig, deployment: str,
                     group_name: str) -> autoscaling.CfnScalingPolicy | None:
    """Target tracking on the role's load signal, which the proxy publishes per deployment and role (the metric
    must "increase or decrease proportionally to the number of instances", hence per endpoint:
    https://docs.aws.amazon.com/autoscaling/ec2/userguide/as-scaling-target-tracking.html)."""
    if fleet.scaling is None:
        return None
    policy = autoscaling.CfnScalingPolicy
    return policy(
        scope, "TargetTracking", auto_scaling_group_name=group_name, policy_type="TargetTrackingScaling",
        target_tracking_configuration=policy.TargetTrackingConfigurationProperty(
            target_value=fleet.scaling.target,
            disable_scale_in=not fleet.scaling.scale_in,
            customized_metric_specification=policy.CustomizedMetricSpecificationProperty(
                metric_name=ROLE_SIGNALS[fleet.role], namespace=naming.PROXY_METRICS_NAMESPACE, statistic="Average",
                dimensions=[policy.MetricDimensionProperty(name=naming.METRIC_DIMENSION_DEPLOYMENT, value=deployment),
                            policy.MetricDimensionProperty(name=naming.METRIC_DIMENSION_ROLE, value=fleet.role)])))


def _scheduled_action(scope: Construct, action: ScheduledActionConfig,
                      group_name: str) -> autoscaling.CfnScheduledAction:
    """One scheduled action; StartTime is "in YYYY-MM-DDThh:mm:ssZ format in UTC/GMT only"
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-autoscaling-scheduledaction.html)."""
    start = action.start_time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if action.start_time else None
    return autoscaling.CfnScheduledAction(
        scope, f"Schedule{naming.pascal(action.name.replace('.', '-'))}", auto_scaling_group_name=group_name,
        recurrence=action.recurrence, start_time=start, time_zone=action.time_zone,
        min_size=action.min_size, max_size=action.max_size, desired_capacity=action.desired_capacity)


def _warm_pool(scope: Construct, fleet: FleetConfig, group_name: str) -> autoscaling.CfnWarmPool | None:
    """Exactly `size` Stopped instances: "Only when MaxGroupPreparedCapacity and MinSize are set to the same value
    does the warm pool have an absolute size" (AWS::AutoScaling::WarmPool;
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-autoscaling-warmpool.html)."""
    pool = fleet.warm_pool
    if pool is None:
        return None
    return autoscaling.CfnWarmPool(
        scope, "WarmPool", auto_scaling_group_name=group_name, min_size=pool.size,
        max_group_prepared_capacity=pool.size, pool_state=pool.state,
        instance_reuse_policy=autoscaling.CfnWarmPool.InstanceReusePolicyProperty(
            reuse_on_scale_in=pool.reuse_on_scale_in))


def _root_volume(fleet: FleetConfig, ami: AmiConfig) -> ec2.CfnLaunchTemplate.BlockDeviceMappingProperty:
    """A warm-pool fleet's root volume holds what a Stopped instance keeps (image layers, compiled cache, weights only
    Hugging Face has), read back at every start: provisioned as the time-to-serving model's layout assumes, since at
    gp3's 125 MiB/s baseline 141 GB of 70B weights alone take 18 minutes (bench/time_to_serving.py)."""
    if fleet.warm_pool is None:
        return lt.root_volume(ami.root_device_name, fleet.root_volume_gib)
    return lt.root_volume(ami.root_device_name, fleet.root_volume_gib,
                          throughput_mibps=serving_time.TARGET.ebs_throughput_mibps, iops=serving_time.TARGET.ebs_iops)


def _capacity(fleet: FleetConfig) -> dict[str, object]:
    """Capacity Block or targeted On-Demand Capacity Reservation settings for the launch template.
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/capacity-blocks-launch.html
    """
    cap = fleet.capacity
    if not cap.targeted:
        return {}
    spec = ec2.CfnLaunchTemplate.CapacityReservationSpecificationProperty(
        capacity_reservation_target=ec2.CfnLaunchTemplate.CapacityReservationTargetProperty(
            capacity_reservation_id=cap.reservation_id))
    settings: dict[str, object] = {"capacity_reservation_specification": spec}
    if cap.type == "capacity-block":
        settings["instance_market_options"] = ec2.CfnLaunchTemplate.InstanceMarketOptionsProperty(
            market_type="capacity-block")
    return settings
