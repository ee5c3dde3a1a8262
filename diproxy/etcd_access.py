"""How a DiStack process reaches etcd: every member, client TLS and an etcd user. The proxy builds it from its
settings, the canary from the same DIPROXY_ETCD_* variables of proxy.env, so both read a secured registry alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import aiohttp

from diproxy.config import HostPort, parse_host_ports
from diproxy.etcd_gateway import EtcdCredentials, EtcdGateway, tls_context

if TYPE_CHECKING:
    from diproxy.config import Settings


@dataclass(frozen=True)
class EtcdAccess:
    """The members (read in turn, the first first) and, where the cluster is secured, its CA, this host's client
    certificate and key, and an etcd user with a file holding its password."""

    members: tuple[HostPort, ...]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password_file: str | None = None

    @classmethod
    def of_settings(cls, settings: "Settings") -> "EtcdAccess":
        assert settings.etcd is not None
        return cls((settings.etcd, *settings.etcd_others), settings.etcd_ca_file, settings.etcd_cert_file,
                   settings.etcd_key_file, settings.etcd_user, settings.etcd_password_file)

    @classmethod
    def of_environment(cls, members: str, env: Mapping[str, str]) -> "EtcdAccess":
        """MEMBERS (HOST:PORT[,HOST:PORT...]) with the TLS and user files proxy.env names (DIPROXY_ETCD_*)."""
        return cls(parse_host_ports(members), *(env.get(f"DIPROXY_ETCD_{name}") or None
                                                 for name in ("CA_FILE", "CERT_FILE", "KEY_FILE", "USER",
                                                              "PASSWORD_FILE")))

    def gateway_options(self) -> dict[str, Any]:
        """EtcdGateway's keyword arguments beyond the first member. Files are read here, once: a missing file fails
        with its path rather than every etcd call later."""
        options: dict[str, Any] = {"others": [(m.host, m.port) for m in self.members[1:]]}
        if self.ca_file:
            options["tls"] = tls_context(self.ca_file, self.cert_file, self.key_file)
        if self.user and self.password_file:
            options["credentials"] = EtcdCredentials(self.user, Path(self.password_file).read_text().strip())
        return options

    def gateway(self, session: aiohttp.ClientSession, request_timeout: float = 5.0) -> EtcdGateway:
        first = self.members[0]
        return EtcdGateway(session, first.host, first.port, request_timeout, **self.gateway_options())

