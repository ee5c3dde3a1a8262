"""Control host (etcd + proxy): a self-healing single instance with a fixed address and a retained etcd volume."""

from __future__ import annotations

from typing import Mapping

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from model import naming
from stacks.components import launch_template as lt
from stacks.components.monitoring import group_metrics_collection
from stacks.components.node_role import NodeRole
from model.config import ControlHostConfig


class ControlState(Construct):
    """What must outlive any control-host instance: its network interface (the address workers and clients
    use) and the etcd data volume. A replacement instance attaches both at boot.

    Exposes ``network_interface``, ``address``, ``etcd_volume``, ``subnet``, ``security_group``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, control: ControlHostConfig, subnet: ec2.ISubnet,
                 security_group: ec2.ISecurityGroup) -> None:
        super().__init__(scope, construct_id)
        self.subnet = subnet
        self.security_group = security_group
        self.network_interface = ec2.CfnNetworkInterface(
            self, "NetworkInterface", subnet_id=subnet.subnet_id, group_set=[security_group.security_group_id],
            private_ip_address=control.private_ip, description="DiStack control host: proxy and etcd address")
        self.address = self.network_interface.attr_primary_private_ip_address
        self.etcd_volume = ec2.Volume(
            self, "EtcdVolume", availability_zone=subnet.availability_zone,
            size=cdk.Size.gibibytes(control.etcd_volume_gib), volume_type=ec2.EbsDeviceVolumeType.GP3,
            encrypted=True, removal_policy=cdk.RemovalPolicy.RETAIN)


class ControlHost(Construct):
    """An Auto Scaling group of exactly one instance: EC2 health checks replace a failed host, and the new one
    takes over the fixed interface and the etcd volume from ``ControlState``.

    Exposes ``launch_template`` and ``auto_scaling_group``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, control: ControlHostConfig, state: ControlState,
                 node_role: NodeRole, user_data: str, tags: Mapping[str, str]) -> None:
        super().__init__(scope, construct_id)
        subnet, security_group = state.subnet, state.security_group
        self.launch_template = ec2.CfnLaunchTemplate(
            self, "LaunchTemplate",
            launch_template_data=ec2.CfnLaunchTemplate.LaunchTemplateDataProperty(
                image_id=control.ami.launch_template_image,
                instance_type=control.instance_type,
                iam_instance_profile=ec2.CfnLaunchTemplate.IamInstanceProfileProperty(
                    arn=node_role.instance_profile.instance_profile_arn),
                network_interfaces=[ec2.CfnLaunchTemplate.NetworkInterfaceProperty(
                    device_index=0, subnet_id=subnet.subnet_id, groups=[security_group.security_group_id],
                    associate_public_ip_address=False, delete_on_termination=True)],
                metadata_options=lt.metadata_options(),
                block_device_mappings=[lt.root_volume(control.ami.root_device_name, control.root_volume_gib)],
                ebs_optimized=True,
                monitoring=ec2.CfnLaunchTemplate.MonitoringProperty(enabled=True),
                user_data=cdk.Fn.base64(user_data),
                tag_specifications=lt.tag_specifications(tags),
            ),
        )
        self.auto_scaling_group = autoscaling.CfnAutoScalingGroup(
            self, "Group", min_size="1", max_size="1", desired_capacity="1",
            vpc_zone_identifier=[subnet.subnet_id],
            launch_template=autoscaling.CfnAutoScalingGroup.LaunchTemplateSpecificationProperty(
                launch_template_id=self.launch_template.ref,
                version=self.launch_template.attr_latest_version_number),
            health_check_type="EC2", health_check_grace_period=300,
            metrics_collection=group_metrics_collection(),
        )
        self._allow_takeover(state, node_role.role, tags)

    def _allow_takeover(self, state: ControlState, role: iam.IRole, tags: Mapping[str, str]) -> None:
        """The boot script attaches the fixed interface and the etcd volume; only to a control-host instance
        of this deployment (tags are checked on the instance, the interface and the volume alike)."""
        stack = cdk.Stack.of(self)
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["ec2:AttachNetworkInterface", "ec2:AttachVolume"],
            resources=[
                stack.format_arn(service="ec2", resource="network-interface", resource_name=state.network_interface.ref),
                stack.format_arn(service="ec2", resource="volume", resource_name=state.etcd_volume.volume_id),
                stack.format_arn(service="ec2", resource="instance", resource_name="*"),
            ],
            conditions={"StringEquals": {f"aws:ResourceTag/{key}": tags[key]
                                         for key in (naming.TAG_DEPLOYMENT, naming.TAG_ROLE)}},
        ))
        # Describe calls have no resource-level permissions; the script polls them until the attachment is done.
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["ec2:DescribeNetworkInterfaces", "ec2:DescribeVolumes"], resources=["*"]))
