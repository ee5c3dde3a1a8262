"""Launch-template pieces every DiStack node shares: IMDSv2, encrypted gp3 root, tags on what launches."""

from __future__ import annotations

from typing import Mapping

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2

from model import catalog


def metadata_options() -> ec2.CfnLaunchTemplate.MetadataOptionsProperty:
    """IMDSv2 only; tags readable from IMDS so node scripts learn their role without an API call.
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-options.html
    """
    return ec2.CfnLaunchTemplate.MetadataOptionsProperty(
        http_tokens="required",
        http_endpoint="enabled",
        # Workers run containers with host networking, so one hop suffices; nothing in a bridge network needs IMDS.
        http_put_response_hop_limit=1,
        instance_metadata_tags="enabled",
    )


def root_volume(device_name: str, size_gib: int, *, throughput_mibps: int | None = None,
                iops: int | None = None) -> ec2.CfnLaunchTemplate.BlockDeviceMappingProperty:
    """Encrypted gp3 root volume (account default EBS key); gp3's baseline (125 MiB/s, 3,000 IOPS) unless given."""
    return ec2.CfnLaunchTemplate.BlockDeviceMappingProperty(
        device_name=device_name,
        ebs=ec2.CfnLaunchTemplate.EbsProperty(
            volume_type="gp3", volume_size=size_gib, encrypted=True, delete_on_termination=True,
            throughput=throughput_mibps, iops=iops),
    )


def tag_specifications(tags: Mapping[str, str]) -> list[ec2.CfnLaunchTemplate.TagSpecificationProperty]:
    """The same tags on instances, their volumes and their network interfaces."""
    cfn_tags = [cdk.CfnTag(key=k, value=v) for k, v in sorted(tags.items())]
    return [ec2.CfnLaunchTemplate.TagSpecificationProperty(resource_type=kind, tags=cfn_tags)
            for kind in ("instance", "volume", "network-interface")]


def efa_network_interfaces(
    instance_type: catalog.InstanceType, *, subnet_id: str, security_group_ids: list[str]
) -> list[ec2.CfnLaunchTemplate.NetworkInterfaceProperty]:
    """ENA primary plus one EFA-only interface per network card, as AWS recommends for multi-card instances:
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-acc-inst-types.html
    EFA-only interfaces take no IP address, so a trn2.48xlarge uses one subnet address, not 16.
    Security groups and subnet sit on every interface: with NetworkInterfaces, EC2 ignores the top-level ones.
    """

    def nic(card: int, device: int, kind: str) -> ec2.CfnLaunchTemplate.NetworkInterfaceProperty:
        return ec2.CfnLaunchTemplate.NetworkInterfaceProperty(
            network_card_index=card,
            device_index=device,
            interface_type=kind,
            subnet_id=subnet_id,
            groups=security_group_ids,
            delete_on_termination=True,
            # Multi-interface instances cannot have a public IP; workers live in a private subnet anyway.
            associate_public_ip_address=False if kind == "interface" else None,
            description=f"{'ENA primary' if kind == 'interface' else 'EFA'} card {card}",
        )

    interfaces = [nic(0, 0, "interface"), nic(0, 1, "efa-only")]
    interfaces += [nic(card, 0, "efa-only") for card in range(1, instance_type.network_cards)]
    return interfaces
