"""A worker fleet: an EFA launch template and an Auto Scaling group of identical Trainium instances."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from stacks import catalog
from stacks.components import launch_template as lt
from stacks.components.monitoring import group_metrics_collection
from stacks.config import AmiConfig, FleetConfig


@dataclass(frozen=True)
class FleetPlacement:
    """Where a fleet's instances go: one subnet, the worker group, and the cluster placement group if any."""

    subnet_id: str
    security_group_id: str
    placement_group_name: str | None


class WorkerFleet(Construct):
    """Prefill, decode, colocated or standard workers.

    The group has no UpdatePolicy on purpose: a new launch-template version (new AMI, new user data) never
    replaces serving instances behind the operator's back; `dictl rollout` does that health-gated.

    Exposes ``launch_template`` and ``auto_scaling_group``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, fleet: FleetConfig, ami: AmiConfig,
                 placement: FleetPlacement, instance_profile: iam.InstanceProfile, user_data: str,
                 tags: Mapping[str, str]) -> None:
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
                block_device_mappings=[lt.root_volume(ami.root_device_name, fleet.root_volume_gib)],
                ebs_optimized=True,
                monitoring=ec2.CfnLaunchTemplate.MonitoringProperty(enabled=True),
                user_data=cdk.Fn.base64(user_data),
                tag_specifications=lt.tag_specifications(tags),
                **_capacity(fleet),
            ),
        )
        self.auto_scaling_group = autoscaling.CfnAutoScalingGroup(
            self, "Group",
            min_size="0",
            max_size=str(fleet.ceiling),
            desired_capacity=str(fleet.count),
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
        )


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
