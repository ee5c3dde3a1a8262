"""Control hosts (an etcd member and a proxy each): one Auto Scaling group whose instances each claim a member slot,
a fixed network interface (the member's stable address) and its retained etcd volume, and serve behind the edge."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

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

# How long a new control host may take from launch to serving (Docker, the etcd image, the proxy's venv, etcd joining)
# before its launch hook gives up and ABANDONs it. di-bootstrap records a heartbeat every 300 s while it works
# (userdata/lib/lifecycle.sh), which restarts this timeout.
LAUNCH_HOOK_TIMEOUT_SECONDS = 900
# Once in service, the load balancer's health checks (ELB health type) decide; the grace period only covers the few
# seconds between the hook's CONTINUE and the first passing check, as the proxy already answered /health by then.
HEALTH_CHECK_GRACE_SECONDS = 120


@dataclass(frozen=True)
class ControlMember:
    """One etcd member's identity: its fixed interface (address) and data volume, both outliving any instance."""

    index: int
    network_interface: ec2.CfnNetworkInterface
    etcd_volume: ec2.Volume

    @property
    def name(self) -> str:
        """etcd member name (--name), stable across replacements."""
        return f"m{self.index}"

    @property
    def address(self) -> str:
        return self.network_interface.attr_primary_private_ip_address


class ControlState(Construct):
    """What must outlive any control-host instance: one network interface and one etcd data volume per member.
    A new instance takes over a free pair at boot (userdata/lib/members.sh).

    Exposes ``members``, ``subnet``, ``security_group``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, control: ControlHostConfig, hosts: int,
                 subnet: ec2.ISubnet, security_group: ec2.ISecurityGroup) -> None:
        super().__init__(scope, construct_id)
        self.subnet = subnet
        self.security_group = security_group
        members = []
        for index in range(hosts):
            # Member 0 keeps the construct IDs of the single control host it replaces, so an existing deployment
            # keeps its address and its etcd data.
            suffix = "" if index == 0 else str(index)
            interface = ec2.CfnNetworkInterface(
                self, f"NetworkInterface{suffix}", subnet_id=subnet.subnet_id,
                group_set=[security_group.security_group_id],
                private_ip_address=control.private_ip if hosts == 1 else None,
                description=f"DiStack control host, etcd member m{index}: its stable address")
            volume = ec2.Volume(
                self, f"EtcdVolume{suffix}", availability_zone=subnet.availability_zone,
                size=cdk.Size.gibibytes(control.etcd_volume_gib), volume_type=ec2.EbsDeviceVolumeType.GP3,
                encrypted=True, removal_policy=cdk.RemovalPolicy.RETAIN)
            members.append(ControlMember(index, interface, volume))
        self.members: tuple[ControlMember, ...] = tuple(members)


class ControlHost(Construct):
    """An Auto Scaling group of exactly one instance per member. A launch hook keeps a new instance out of service
    (and out of the load balancer) until its bootstrap reports etcd and the proxy serving, and ABANDONs it when the
    bootstrap fails or never reports. With target groups, the group replaces an instance the load balancer finds
    unhealthy (health check type ELB).

    Exposes ``launch_template`` and ``auto_scaling_group``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, control: ControlHostConfig, state: ControlState,
                 node_role: NodeRole, user_data: str, tags: Mapping[str, str],
                 target_group_arns: Sequence[str] = ()) -> None:
        super().__init__(scope, construct_id)
        subnet, security_group = state.subnet, state.security_group
        hosts = str(len(state.members))
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
            self, "Group", min_size=hosts, max_size=hosts, desired_capacity=hosts,
            vpc_zone_identifier=[subnet.subnet_id],
            launch_template=autoscaling.CfnAutoScalingGroup.LaunchTemplateSpecificationProperty(
                launch_template_id=self.launch_template.ref,
                version=self.launch_template.attr_latest_version_number),
            # ELB: an instance whose proxy or etcd fails the load balancer's checks is replaced, not only one whose
            # EC2 status checks fail. https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-health-checks.html
            health_check_type="ELB" if target_group_arns else "EC2",
            health_check_grace_period=HEALTH_CHECK_GRACE_SECONDS,
            target_group_arns=list(target_group_arns) or None,
            # "A popular use of lifecycle hooks is to control when instances are registered with Elastic Load
            # Balancing": the instance is registered only after the launch hook completes
            # (https://docs.aws.amazon.com/autoscaling/ec2/userguide/lifecycle-hooks.html). di-bootstrap completes it
            # with CONTINUE once etcd and the proxy answer, ABANDON on failure; silence times out to ABANDON.
            lifecycle_hook_specification_list=[autoscaling.CfnAutoScalingGroup.LifecycleHookSpecificationProperty(
                lifecycle_hook_name=naming.LAUNCH_HOOK, lifecycle_transition="autoscaling:EC2_INSTANCE_LAUNCHING",
                default_result="ABANDON", heartbeat_timeout=LAUNCH_HOOK_TIMEOUT_SECONDS)],
            metrics_collection=group_metrics_collection(),
        )
        self._allow_takeover(state, node_role.role, tags)

    def _allow_takeover(self, state: ControlState, role: iam.IRole, tags: Mapping[str, str]) -> None:
        """The boot script attaches a member's interface and etcd volume; only to a control-host instance of this
        deployment (tags are checked on the instance, the interface and the volume alike)."""
        stack = cdk.Stack.of(self)
        resources = []
        for member in state.members:
            resources += [
                stack.format_arn(service="ec2", resource="network-interface",
                                 resource_name=member.network_interface.ref),
                stack.format_arn(service="ec2", resource="volume", resource_name=member.etcd_volume.volume_id)]
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["ec2:AttachNetworkInterface", "ec2:AttachVolume"],
            resources=[*resources, stack.format_arn(service="ec2", resource="instance", resource_name="*")],
            conditions={"StringEquals": {f"aws:ResourceTag/{key}": tags[key]
                                         for key in (naming.TAG_DEPLOYMENT, naming.TAG_ROLE)}},
        ))
        # Describe calls have no resource-level permissions; the script polls them until the attachment is done.
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["ec2:DescribeNetworkInterfaces", "ec2:DescribeVolumes"], resources=["*"]))
