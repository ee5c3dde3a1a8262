"""The proxy's systemd units as shipped: they verify, and the proxy runs under a memory bound of its own."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from tests.tools import needs

DEPLOY = Path(__file__).resolve().parents[2] / "diproxy" / "deploy"
_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


def service(name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / name).read_text())
    return dict(parser["Service"])


def size(value: str) -> int:
    return int(value[:-1]) * _UNITS[value[-1]] if value[-1] in _UNITS else int(value)


def test_the_proxy_is_throttled_before_it_is_killed_and_killed_before_the_host_runs_out():
    unit = service("distack-proxy.service")
    high, most = size(unit["MemoryHigh"]), size(unit["MemoryMax"])
    # m5.xlarge, the smallest control host, has 16 GiB; etcd and the CloudWatch agent keep the rest.
    assert 0 < high < most <= 4 * 1024**3
    assert unit["Restart"] == "on-failure"


@needs("systemd-analyze")
def test_the_proxy_units_verify(tmp_path):
    for unit in DEPLOY.glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/di/proxy/venv/bin/python", sys.executable))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *[f"./{u.name}" for u in DEPLOY.glob("*.service")]],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
