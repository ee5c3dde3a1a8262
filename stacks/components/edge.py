"""The control plane's edge: an internal Network Load Balancer in front of the control hosts' proxies (TLS with the
config's ACM certificate) and, with three hosts, of their etcd members for the workers; and the proxy's API key,
generated into Secrets Manager when the config names none but opens the proxy to a client network."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from model import control_plane, naming
from model.config import DeploymentConfig

# TLS 1.3 with TLS 1.2 fallback and forward secrecy only, the policy ELB recommends for NLB TLS listeners:
# https://docs.aws.amazon.com/elasticloadbalancing/latest/network/describe-ssl-policies.html
TLS_POLICY = elbv2.SslPolicy.RECOMMENDED_TLS
TLS_PORT = 443
# Generated keys: 64 characters of [A-Za-z0-9], about 381 bits, well above the 32 bytes the proxy's key needs.
GENERATED_KEY_LENGTH = 64


class Edge(Construct):
    """Load balancer, its security group and target groups, and the generated API key when there is one.

    Exposes ``load_balancer``, ``security_group``, ``target_group_arns``, ``proxy_url``, ``etcd_endpoint`` (host:port
    workers register at through the load balancer, or None with one host) and ``generated_api_key`` (or None).
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: DeploymentConfig, vpc: ec2.IVpc,
                 subnet: ec2.ISubnet, control_group: ec2.ISecurityGroup, worker_group: ec2.ISecurityGroup) -> None:
        super().__init__(scope, construct_id)
        plane = config.control_plane
        self.security_group = ec2.SecurityGroup(self, "SecurityGroup", vpc=vpc, allow_all_outbound=False,
                                                description="DiStack load balancer: clients to the proxies")
        # Internal: the scheme gives the load balancer private addresses only
        # (https://docs.aws.amazon.com/elasticloadbalancing/latest/network/network-load-balancers.html#load-balancer-scheme),
        # in the one subnet of the control hosts. Its own security group filters clients
        # (https://docs.aws.amazon.com/elasticloadbalancing/latest/network/load-balancer-security-groups.html).
        self.load_balancer = elbv2.NetworkLoadBalancer(
            self, "LoadBalancer", vpc=vpc, internet_facing=False,
            vpc_subnets=ec2.SubnetSelection(subnets=[subnet]), security_groups=[self.security_group])
        client_port = TLS_PORT if plane.tls else naming.PROXY_PORT
        for cidr in config.network.allowed_client_cidrs:
            self.security_group.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(client_port),
                                                 f"Proxy clients {cidr}")

        distack = config.proxy == "distack"
        proxy_targets = self._target_group(
            "ProxyTargets", vpc, naming.PROXY_PORT,
            # The DiStack proxy's /health answers as soon as it serves (liveness, not worker capacity: a control host
            # is not replaced because no worker is up); neuron-proxy-server has no health path, so TCP.
            # https://docs.aws.amazon.com/elasticloadbalancing/latest/network/target-group-health-checks.html
            elbv2.HealthCheck(protocol=elbv2.Protocol.HTTP if distack else elbv2.Protocol.TCP,
                              path="/health" if distack else None, port=str(naming.PROXY_PORT),
                              interval=cdk.Duration.seconds(10), healthy_threshold_count=2,
                              unhealthy_threshold_count=2),
            preserve_client_ip=True)
        listener_props = dict(port=TLS_PORT, protocol=elbv2.Protocol.TLS, ssl_policy=TLS_POLICY,
                              certificates=[elbv2.ListenerCertificate.from_arn(plane.certificate_arn)]) \
            if plane.tls else dict(port=naming.PROXY_PORT, protocol=elbv2.Protocol.TCP)
        # A TLS listener terminates TLS with the certificate and forwards to the targets over TCP:
        # https://docs.aws.amazon.com/elasticloadbalancing/latest/network/create-tls-listener.html
        self.load_balancer.add_listener("ProxyListener", default_target_groups=[proxy_targets], **listener_props)
        self.security_group.add_egress_rule(control_group, ec2.Port.tcp(naming.PROXY_PORT),
                                            "To the proxies and their health checks")
        control_group.add_ingress_rule(self.security_group, ec2.Port.tcp(naming.PROXY_PORT),
                                       "Clients and health checks through the load balancer")
        self.target_group_arns: list[str] = [proxy_targets.target_group_arn]

        self.etcd_endpoint: str | None = None
        if control_plane.control_hosts(config) > 1:
            # Workers (di-register, NeuronConnector) take one etcd address; through the load balancer it is every
            # member's. The check is TCP: etcd's /health needs a quorum, and failing it on every member at once would
            # have the group replace them all together.
            etcd_targets = self._target_group(
                "EtcdTargets", vpc, naming.ETCD_CLIENT_PORT,
                elbv2.HealthCheck(protocol=elbv2.Protocol.TCP, port=str(naming.ETCD_CLIENT_PORT),
                                  interval=cdk.Duration.seconds(10), healthy_threshold_count=2,
                                  unhealthy_threshold_count=2))
            self.load_balancer.add_listener("EtcdListener", port=naming.ETCD_CLIENT_PORT,
                                            protocol=elbv2.Protocol.TCP, default_target_groups=[etcd_targets])
            self.security_group.add_ingress_rule(worker_group, ec2.Port.tcp(naming.ETCD_CLIENT_PORT),
                                                 "Workers register in etcd")
            self.security_group.add_egress_rule(control_group, ec2.Port.tcp(naming.ETCD_CLIENT_PORT),
                                                "To the etcd members and their health checks")
            control_group.add_ingress_rule(self.security_group, ec2.Port.tcp(naming.ETCD_CLIENT_PORT),
                                           "Workers' etcd traffic and health checks through the load balancer")
            # Members replicate to each other on the peer port; only control hosts may.
            control_group.add_ingress_rule(control_group, ec2.Port.tcp(naming.ETCD_PEER_PORT), "etcd peers")
            control_group.add_egress_rule(control_group, ec2.Port.tcp(naming.ETCD_PEER_PORT), "etcd peers")
            # A member rejoining with no data asks the others to list, remove and add it (userdata/lib/members.sh
            # etcd_cluster_state, on their client port), and each proxy falls back to the other members' client port
            # while its own member is down (DIPROXY_ETCD). Without this rule both found no member answering.
            control_group.add_ingress_rule(control_group, ec2.Port.tcp(naming.ETCD_CLIENT_PORT),
                                           "etcd members' rejoin and the proxies' fallback to the other members")
            control_group.add_egress_rule(control_group, ec2.Port.tcp(naming.ETCD_CLIENT_PORT),
                                          "etcd members' rejoin and the proxies' fallback to the other members")
            self.target_group_arns.append(etcd_targets.target_group_arn)
            self.etcd_endpoint = f"{self.load_balancer.load_balancer_dns_name}:{naming.ETCD_CLIENT_PORT}"

        dns = self.load_balancer.load_balancer_dns_name
        self.proxy_url = f"https://{dns}" if plane.tls else f"http://{dns}:{naming.PROXY_PORT}"

        self.generated_api_key: secretsmanager.Secret | None = None
        if distack and config.network.allowed_client_cidrs and config.proxy_api_key_secret is None:
            # Generated by CloudFormation itself (GenerateSecretString), so no function runs and the value never
            # appears in the template: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-secretsmanager-secret.html
            self.generated_api_key = secretsmanager.Secret(
                self, "ApiKey", description=f"DiStack {config.name}: the proxy's API key (Authorization: Bearer)",
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    password_length=GENERATED_KEY_LENGTH, exclude_punctuation=True, include_space=False),
                removal_policy=cdk.RemovalPolicy.DESTROY)

    def _target_group(self, construct_id: str, vpc: ec2.IVpc, port: int, health_check: elbv2.HealthCheck,
                      preserve_client_ip: bool = False) -> elbv2.NetworkTargetGroup:
        return elbv2.NetworkTargetGroup(
            self, construct_id, vpc=vpc, port=port, protocol=elbv2.Protocol.TCP, target_type=elbv2.TargetType.INSTANCE,
            health_check=health_check,
            # The proxies see each client's own address, which their per-client in-flight cap counts (diproxy/
            # admission.py): with client IP preservation on, "Instance type (IPv4)" targets receive the "Client IPv4
            # address" (https://docs.aws.amazon.com/elasticloadbalancing/latest/network/edit-target-group-attributes.html
            # #client-ip-preservation). The control hosts' group still admits only the load balancer's group: that
            # rule holds "even if you enable client IP preservation"
            # (https://docs.aws.amazon.com/elasticloadbalancing/latest/network/load-balancer-security-groups.html).
            # The cost: a target that connects to the load balancer is refused when routed to itself (internal load
            # balancers do not support hairpinning, https://docs.aws.amazon.com/elasticloadbalancing/latest/network/
            # load-balancer-troubleshooting.html#loopback-timeout); the control hosts call their proxy on localhost
            # (userdata/ops/smoke.sh, bench.sh). etcd keeps preservation off: its clients are workers, counted nowhere.
            preserve_client_ip=preserve_client_ip,
            # A leaving target keeps its open connections this long, so streams in flight can finish.
            deregistration_delay=cdk.Duration.seconds(60))

