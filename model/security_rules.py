"""Static security rules: who may reach the proxy (private, bounded client networks), with which protection (an API
key, TLS at the edge), and control hosts whose traffic is encrypted in transit."""

from __future__ import annotations

import ipaddress
import re
from typing import Iterator

from model.config import DeploymentConfig
from model.control_plane import (ENCRYPTING_CONTROL_FAMILIES, PRIVATE_CLIENT_NETWORKS, WIDEST_CLIENT_PREFIX,
                                 control_hosts, family)
from model.problems import Problem, skip_unusable

PRIVATE_NAMES = ", ".join(str(n) for n in PRIVATE_CLIENT_NETWORKS)


def check(config: DeploymentConfig) -> list[Problem]:
    """Every security rule violation of `config`."""
    problems: list[Problem] = []
    problems += skip_unusable(_client_networks(config))
    problems += skip_unusable(_edge(config))
    problems += skip_unusable(_control_hosts(config))
    problems += skip_unusable(_in_flight_caps(config))
    return problems


def _in_flight_caps(config: DeploymentConfig) -> Iterator[Problem]:
    plane = config.control_plane
    if plane.max_in_flight_per_client > plane.max_in_flight:
        yield Problem("control_plane.max_in_flight_per_client",
                      f"{plane.max_in_flight_per_client} is above control_plane.max_in_flight "
                      f"({plane.max_in_flight}), so the per-client cap never applies",
                      f"set it to at most {plane.max_in_flight}, or raise max_in_flight")


def _client_networks(config: DeploymentConfig) -> Iterator[Problem]:
    for i, cidr in enumerate(config.network.allowed_client_cidrs):
        path = f"network.allowed_client_cidrs[{i}]"
        try:
            network = ipaddress.IPv4Network(cidr)
        except ValueError as err:
            yield Problem(path, f"'{cidr}' is not an IPv4 network ({err})", "write it as a.b.c.d/len, e.g. 10.1.0.0/16")
            continue
        if not any(network.subnet_of(private) for private in PRIVATE_CLIENT_NETWORKS):
            yield Problem(path, f"{cidr} is not a private network: the proxy would be open to the internet",
                          f"list your clients' networks inside {PRIVATE_NAMES}, or leave the list empty and use "
                          "`dictl tunnel`")
        elif network.prefixlen < WIDEST_CLIENT_PREFIX:
            yield Problem(path, f"{cidr} is wider than /{WIDEST_CLIENT_PREFIX} ({network.num_addresses:,} addresses)",
                          f"list the clients' own networks, each /{WIDEST_CLIENT_PREFIX} or narrower (the largest "
                          "block one VPC may have)")


def _edge(config: DeploymentConfig) -> Iterator[Problem]:
    """An open client network needs the proxy's API key (DiStack's proxy: named, or generated into Secrets Manager) and
    TLS at the load balancer, unless clear text is chosen explicitly."""
    if not config.network.allowed_client_cidrs:
        return
    plane = config.control_plane
    if config.proxy != "distack":
        yield Problem("network.allowed_client_cidrs",
                      f"proxy {config.proxy} checks no API key, so anyone in these networks could call it",
                      "leave allowed_client_cidrs empty and reach the proxy with `dictl tunnel`, or set proxy: distack "
                      "(which requires a key, generated into Secrets Manager unless proxy_api_key_secret names one)")
    if not plane.tls and not plane.plaintext_edge:
        yield Problem("control_plane.certificate_arn",
                      "clients in allowed_client_cidrs would send prompts and the API key in clear text",
                      "set control_plane.certificate_arn to an ACM certificate for the proxy's DNS name (TLS on port "
                      "443), or control_plane.plaintext_edge: true to accept clear text knowingly")
    if plane.tls and plane.plaintext_edge:
        yield Problem("control_plane.plaintext_edge", "plaintext_edge is true but certificate_arn turns TLS on",
                      "remove plaintext_edge")
    if plane.certificate_arn and not re.search(f":acm:{re.escape(config.region)}:", plane.certificate_arn):
        yield Problem("control_plane.certificate_arn",
                      f"the certificate is not in {config.region}; a load balancer can only use one from its own Region",
                      f"request or import the certificate in ACM in {config.region}")


def _control_hosts(config: DeploymentConfig) -> Iterator[Problem]:
    itype = config.control_host.instance_type
    if family(itype) not in ENCRYPTING_CONTROL_FAMILIES:
        yield Problem("control_host.instance_type",
                      f"{itype} does not encrypt its network traffic in transit (AWS Nitro in-transit encryption)",
                      f"use one of the families {', '.join(ENCRYPTING_CONTROL_FAMILIES[:6])}, ..., e.g. m7i.xlarge")
    hosts = control_hosts(config)
    if config.engine_module.control_ports and hosts != 1:
        # LMCache's sender notifies the proxy that sent the request on its own port; through a load balancer the
        # notice may reach another proxy, which waits for a transfer it never hears of.
        yield Problem("control_plane.hosts", f"engine {config.engine} notifies one proxy directly (ports "
                      f"{', '.join(map(str, config.engine_module.control_ports))}), which several control hosts break",
                      "set control_plane.hosts: 1")
    if config.control_host.private_ip is not None and hosts != 1:
        yield Problem("control_host.private_ip",
                      f"a fixed private_ip names one control host, but control_plane.hosts is {hosts}",
                      "remove private_ip (clients use the load balancer's name), or set control_plane.hosts: 1")
