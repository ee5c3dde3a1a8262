"""Network: a one-AZ VPC with private subnets (NAT egress, VPC endpoints), or an existing VPC and subnet."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from model.config import NetworkConfig

INTERFACE_ENDPOINTS = {
    # SSM Agent needs all three to take Run Command and Session Manager traffic without the internet:
    # https://docs.aws.amazon.com/systems-manager/latest/userguide/setup-create-vpc.html
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    # Every other AWS API a node calls at boot (`aws SERVICE ...` in userdata/; tests/test_offline_boot.py derives
    # the list from the scripts and fails on a service without an endpoint): the control host's interface and volume
    # takeover (ec2), its lifecycle hook and group (autoscaling), its boot signal (cloudformation), the etcd trust and
    # API key secrets (secretsmanager), and its images through the deployment's pull-through cache (ecr.api for the
    # login token, ecr.dkr for the registry itself: "you must enable a private DNS hostname" on ecr.dkr,
    # awsdocs/amazon-ecr-user-guide doc_source/vpc-endpoints.md@04735f3f; the layers come from S3 through the gateway),
    # and the caller's own identity (sts), from which a node learns the ROLE-ID:INSTANCE-ID folder it may write
    # (userdata/lib/scope.sh); AWS CLI v2 calls STS's Regional endpoint, which the interface endpoint's private DNS
    # serves (https://docs.aws.amazon.com/sdkref/latest/guide/feature-sts-regionalized-endpoints.html).
    "Ec2": ec2.InterfaceVpcEndpointAwsService.EC2,
    "AutoScaling": ec2.InterfaceVpcEndpointAwsService.AUTOSCALING,
    "CloudFormation": ec2.InterfaceVpcEndpointAwsService.CLOUDFORMATION,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
}


class Network(Construct):
    """VPC and the single private subnet that holds every worker and the control host.

    EFA traffic cannot cross subnets, so all workers share one subnet in one AZ:
    https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa.html#efa-limits

    Exposes ``vpc``, ``subnet`` (the worker subnet) and ``subnet_id``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, network: NetworkConfig, availability_zone: str,
                 log_retention: logs.RetentionDays, metrics_endpoint: bool = False) -> None:
        super().__init__(scope, construct_id)
        if network.existing:
            self.vpc = ec2.Vpc.from_vpc_attributes(
                self, "Vpc", vpc_id=network.vpc_id, availability_zones=[availability_zone],
                vpc_cidr_block=network.vpc_cidr, private_subnet_ids=[network.subnet_id],
                private_subnet_route_table_ids=[network.route_table_id or ""])
        else:
            self.vpc = self._new_vpc(network, availability_zone, log_retention)
        self.subnet = self.vpc.select_subnets(
            subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS if self._has_egress(network)
            else ec2.SubnetType.PRIVATE_ISOLATED).subnets[0]
        self.subnet_id = self.subnet.subnet_id
        # The networks the proxy takes registered workers from: the worker subnet's CIDR, which CDK allocates at synth
        # for a VPC it creates; an imported subnet has no CIDR here, and the proxy then takes the VPC's (the config's
        # vpc_cidr, model/node_values.py proxy_values).
        self.worker_networks: tuple[str, ...] = () if network.existing else (self.subnet.ipv4_cidr_block,)
        if network.vpc_endpoints:
            self._add_endpoints(network, metrics_endpoint)

    @staticmethod
    def _has_egress(network: NetworkConfig) -> bool:
        return network.existing or network.nat_gateway

    def _new_vpc(self, network: NetworkConfig, availability_zone: str,
                 log_retention: logs.RetentionDays) -> ec2.Vpc:
        subnets = [ec2.SubnetConfiguration(
            name="Private", cidr_mask=20,
            subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS if network.nat_gateway
            else ec2.SubnetType.PRIVATE_ISOLATED)]
        if network.nat_gateway:
            # The NAT gateway needs a public subnet; nothing else is placed there.
            subnets.insert(0, ec2.SubnetConfiguration(name="Public", cidr_mask=26,
                                                      subnet_type=ec2.SubnetType.PUBLIC, map_public_ip_on_launch=False))
        vpc = ec2.Vpc(
            self, "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(network.vpc_cidr),
            availability_zones=[availability_zone],
            nat_gateways=1 if network.nat_gateway else 0,
            subnet_configuration=subnets,
            restrict_default_security_group=False,
        )
        # Retained: the connection record is the forensic trail of a deployment and must outlive its stack. The
        # group has no fixed name, so a new stack of the same environment creates its own without a conflict.
        flow_logs = logs.LogGroup(self, "FlowLogs", retention=log_retention,
                                  removal_policy=cdk.RemovalPolicy.RETAIN)
        vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                         traffic_type=ec2.FlowLogTrafficType.ALL)
        return vpc

    def _add_endpoints(self, network: NetworkConfig, metrics_endpoint: bool) -> None:
        placement = ec2.SubnetSelection(subnets=[self.subnet])
        # No endpoint policy (full access, the default): the nodes' S3 reads include buckets that are not this
        # stack's, which a policy would have to name: the CDK assets bucket, ECR's layer bucket
        # (prod-REGION-starport-layer-bucket, doc_source/vpc-endpoints.md) and the AL2023 package repositories dnf
        # reads (docs/control-plane.md "Booting without the internet"). The roles' own policies still decide.
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[placement])
        endpoint_sg = ec2.SecurityGroup(self, "EndpointSecurityGroup", vpc=self.vpc, allow_all_outbound=False,
                                        description="VPC interface endpoints: HTTPS from inside the VPC")
        endpoint_sg.add_ingress_rule(ec2.Peer.ipv4(network.vpc_cidr), ec2.Port.tcp(443), "HTTPS from the VPC")
        services = dict(INTERFACE_ENDPOINTS)
        if metrics_endpoint:
            # The DiStack proxy's metrics go to CloudWatch (monitoring), not CloudWatch Logs.
            services["Monitoring"] = ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING
        for name, service in services.items():
            self.vpc.add_interface_endpoint(name, service=service, subnets=placement, private_dns_enabled=True,
                                            security_groups=[endpoint_sg], open=False)
