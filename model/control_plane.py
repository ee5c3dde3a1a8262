"""The control plane's shape and its edge: how many control hosts run etcd and the proxy, TLS at the load balancer,
and which client networks and control-host types the rules accept (model/security_rules.py)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from model import naming

if TYPE_CHECKING:
    from model.config import DeploymentConfig

# Who may be a client: private IPv4 only (RFC 1918, https://www.rfc-editor.org/rfc/rfc1918#section-3, and the shared
# address space of RFC 6598, https://www.rfc-editor.org/rfc/rfc6598#section-7, which carrier-grade NAT and some
# corporate networks route). Anything else is public, however it is split: 0.0.0.0/1 + 128.0.0.0/1 is the internet.
PRIVATE_CLIENT_NETWORKS = tuple(ipaddress.IPv4Network(n) for n in
                                ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
# The widest client network accepted: /16 is the largest CIDR block a VPC may have ("The allowed block size is
# between a /16 netmask (65,536 IP addresses) and /28 netmask (16 IP addresses)",
# https://docs.aws.amazon.com/vpc/latest/userguide/vpc-cidr-blocks.html), so one client VPC, or one office network,
# fits; a whole /8 is everyone on a corporate network, which is what the API key and TLS cannot make small again.
WIDEST_CLIENT_PREFIX = 16

# Control-host families whose instances encrypt traffic between each other in hardware (AWS Nitro in-transit
# encryption: "Traffic between supported instance types is automatically encrypted", with the list of types at
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/data-protection.html#encryption-transit; DescribeInstanceTypes
# reports it per type as NetworkInfo.EncryptionInTransitSupported). m5, the former default, is not among them.
ENCRYPTING_CONTROL_FAMILIES = ("m6i", "m6id", "m6in", "m6idn", "m6a", "m7i", "m7a", "c6i", "c6id", "c6in", "c7i",
                               "c7a", "r6i", "r6id", "r7i", "r7a")
DEFAULT_CONTROL_TYPE = "m7i.xlarge"

ACM_CERTIFICATE_ARN = r"^arn:aws[a-z-]*:acm:[a-z]{2}(-gov)?-[a-z]+-\d:\d{12}:certificate/[0-9a-f-]{36}$"


class ControlPlaneConfig(BaseModel):
    """How many control hosts, and how clients reach them: an internal Network Load Balancer in front of the proxies
    (stacks/components/control_plane.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: Literal[1, 3] = Field(
        default=3,
        description="Control hosts, each running an etcd member and a proxy behind the load balancer. Default 3, or 1 "
                    "with engine lmcache (its sender notifies one proxy directly). 3: any one "
                    "host may fail or be replaced with no lost registration and no outage. 1 (dev): a lost host means "
                    "no proxy and no registry until its replacement has booted (minutes); its etcd volume is kept.")
    certificate_arn: str | None = Field(
        default=None, pattern=ACM_CERTIFICATE_ARN,
        description="ACM certificate (in the deployment's Region) for the load balancer's TLS listener on port 443. "
                    "Required when network.allowed_client_cidrs is not empty, unless plaintext_edge is true.")
    plaintext_edge: bool = Field(
        default=False,
        description="Accept clients in clear text (TCP on the proxy port) when allowed_client_cidrs is not empty and "
                    "no certificate_arn is set. Prompts, answers and the API key then cross the network unencrypted.")

    max_in_flight: int = Field(
        default=256, ge=1, le=100_000,
        description="Completion requests one proxy carries at once; more are answered 429 with Retry-After. Bounds the "
                    "proxy's memory and the workers' queues.")
    max_in_flight_per_client: int = Field(
        default=64, ge=1, le=100_000,
        description="Completion requests one client address may have in flight at one proxy; more are answered 429. "
                    "`dictl bench` and the smoke test call from the control host itself, so their concurrency counts "
                    "as one client. At most max_in_flight.")

    @property
    def tls(self) -> bool:
        """True when the load balancer terminates TLS."""
        return self.certificate_arn is not None


def family(instance_type: str) -> str:
    """The family part of an EC2 instance type name (m7i of m7i.xlarge)."""
    return instance_type.split(".", 1)[0]


def control_plane_values(config_hosts: int, members: list[tuple[str, str, str]]) -> dict[str, str]:
    """node.env additions of a control host in a cluster of ``config_hosts`` members: every member's slot
    (interface, etcd volume, address, in member order; the host claims a free one at boot, userdata/lib/members.sh),
    and its own etcd member on loopback for the local proxy. Empty with one host (node.env names its interface,
    volume and address directly)."""
    if config_hosts == 1:
        return {}
    return {
        "DI_CONTROL_SLOTS": " ".join(",".join(member) for member in members),
        "DI_CONTROL_ADDRESS": "",
        "DI_CONTROL_ENI": "",
        "DI_ETCD_VOLUME": "",
        "DI_ETCD": f"127.0.0.1:{naming.ETCD_CLIENT_PORT}",
    }


def control_hosts(config: DeploymentConfig) -> int:
    """How many control hosts the deployment runs: as set, else 3, or 1 for an engine whose workers notify one proxy
    directly (its control ports: LMCache's sender), which a load balancer in between would break."""
    plane = config.control_plane
    if "hosts" in plane.model_fields_set:
        return plane.hosts
    return 1 if config.engine_module.control_ports else 3


def etcd_secured(config: DeploymentConfig) -> bool:
    """Whether the deployment's etcd serves clients over TLS with client certificates and etcd's auth
    (userdata/lib/etcd_trust.sh): always, except where the engine's own server writes the registry (NeuronConnector
    takes etcd as a bare host:port, with no documented TLS or credential setting:
    docs/security.md#engine-neuron-connector) or a proxy other than DiStack's reads it (neuron-proxy-server, the same)."""
    return config.runs_distack_proxy and not config.engine_module.self_registers


def etcd_peers_secured(config: DeploymentConfig) -> bool:
    """Whether the members replicate over TLS with peer certificates (userdata/di-run etcd_peer_tls_args): whenever
    there are peers, several control hosts, whatever the clients speak. The peer port is the members' alone, so no
    engine or proxy constrains it, not even NeuronConnector's plain client port."""
    return control_hosts(config) > 1


def etcd_trust_needed(config: DeploymentConfig) -> bool:
    """Whether the deployment has an etcd trust (CA secret) for a control host to fill: for its clients, its peers or
    both."""
    return etcd_secured(config) or etcd_peers_secured(config)
