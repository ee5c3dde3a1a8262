"""How the proxy reaches etcd, from its settings: the other members, TLS and credentials for EtcdGateway."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from diproxy.etcd_gateway import EtcdCredentials, tls_context

if TYPE_CHECKING:
    from diproxy.config import Settings


def etcd_access(settings: "Settings") -> dict[str, Any]:
    """EtcdGateway's keyword arguments beyond the first member. Files are read once, at start: a missing file fails
    the start with its path rather than every etcd call later."""
    access: dict[str, Any] = {"others": [(m.host, m.port) for m in settings.etcd_others]}
    if settings.etcd_ca_file:
        access["tls"] = tls_context(settings.etcd_ca_file, settings.etcd_cert_file, settings.etcd_key_file)
    if settings.etcd_user and settings.etcd_password_file:
        password = Path(settings.etcd_password_file).read_text().strip()
        access["credentials"] = EtcdCredentials(settings.etcd_user, password)
    return access
