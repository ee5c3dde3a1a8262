"""The cluster placement group every worker fleet shares."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from constructs import Construct


class ClusterPlacement(Construct):
    """Packs workers close together for EFA latency; one AZ by definition.
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/placement-strategies.html#placement-groups-cluster

    Exposes ``group_name``.
    """

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.group = ec2.CfnPlacementGroup(self, "Group", strategy="cluster")
        self.group_name = self.group.ref
