"""Security groups and every rule between DiStack's parts, in one place."""

from __future__ import annotations

from typing import Iterable

from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from model import naming
from model.config import NetworkConfig


class Security(Construct):
    """Worker (EFA) and control-host security groups. No SSH and no 0.0.0.0/0 ingress anywhere.

    Exposes ``worker_group`` and ``control_group``.
    """

    def __init__(self, scope: Construct, construct_id: str, *, vpc: ec2.IVpc, network: NetworkConfig,
                 vllm_ports: Iterable[int], engine_control_ports: Iterable[int] = ()) -> None:
        super().__init__(scope, construct_id)
        # allow_all_outbound=False: with it on, CDK silently drops the explicit self-egress rule EFA needs.
        self.worker_group = ec2.SecurityGroup(self, "WorkerGroup", vpc=vpc, allow_all_outbound=False,
                                              description="DiStack workers: EFA, KV transfer, vLLM")
        self.control_group = ec2.SecurityGroup(self, "ControlGroup", vpc=vpc, allow_all_outbound=False,
                                               description="DiStack control host: proxy and etcd")
        # EFA requires all traffic to *and from* the group itself (this also carries the KV signal ports, NIXL's
        # side-channel ports and LMCache's receiver ports, which therefore stay open between workers only):
        # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-start.html#efa-start-security
        self.worker_group.connections.allow_internally(ec2.Port.all_traffic(), "EFA and KV transfer between workers")

        for group in (self.worker_group, self.control_group):
            group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443),
                                  "HTTPS: AWS APIs, public ECR, Hugging Face")
            if network.http_egress:
                group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(80),
                                      "HTTP: signed OS packages from the distribution mirrors")

        # Clients reach the proxies through the load balancer, whose own group admits them (components/edge.py).
        for port in sorted(set(vllm_ports)):
            self.control_group.connections.allow_to(self.worker_group, ec2.Port.tcp(port),
                                                    f"Proxy to vLLM endpoint port {port}")
        # Both modes: NeuronConnector registers DI endpoints, di-register standard ones.
        self.worker_group.connections.allow_to(self.control_group, ec2.Port.tcp(naming.ETCD_CLIENT_PORT),
                                               "Workers register in etcd")
        for port in sorted(set(engine_control_ports)):
            self.worker_group.connections.allow_to(self.control_group, ec2.Port.tcp(port),
                                                   f"Workers reach the proxy's engine port {port}")
