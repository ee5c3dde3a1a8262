"""The control host's memory bounds leave etcd its room: the control containers' slice (the legacy proxy, LLMPerf)
plus the DiStack proxy's unit bound plus what etcd needs for its quota fit the default control host's memory."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from model import control_plane, naming

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
# EC2 general purpose types, "m7i.xlarge ... 4 vCPUs, 16 GiB" (https://aws.amazon.com/ec2/instance-types/m7i/).
HOST_MEMORY_GIB = {"m7i.xlarge": 16}
# What etcd needs beyond its memory-mapped database, and the system (docker, the SSM and CloudWatch agents): the
# allowances docs/security.md "The control host's containers" reasons with.
ETCD_HEAP_GIB = 1
SYSTEM_GIB = 1


def _unit(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((ROOT / path).read_text())
    return parser


def _bytes(value: str, host: int) -> int:
    """A systemd memory setting (systemd.resource-control(5)): a percentage of the host, or bytes with K/M/G/T."""
    if value.endswith("%"):
        return host * int(value[:-1]) // 100
    number, unit = re.fullmatch(r"(\d+)([KMGT]?)", value).groups()
    return int(number) * 1024 ** " KMGT".index(unit or " ")


def test_the_bounds_leave_etcd_its_quota_and_heap_on_the_default_control_host() -> None:
    host = HOST_MEMORY_GIB[control_plane.DEFAULT_CONTROL_TYPE] * GIB
    containers = _unit("userdata/units/di-containers-control.slice")["Slice"]
    proxy = _unit("diproxy/deploy/distack-proxy.service")["Service"]
    bounded = _bytes(containers["MemoryMax"], host) + _bytes(proxy["MemoryMax"], host)
    etcd = naming.ETCD_QUOTA_BYTES + ETCD_HEAP_GIB * GIB
    assert bounded + etcd + SYSTEM_GIB * GIB <= host, (bounded / GIB, etcd / GIB)
    # The throttling bound sits below the hard one, and nothing of the slice's swaps.
    assert _bytes(containers["MemoryHigh"], host) < _bytes(containers["MemoryMax"], host)
    assert containers["MemorySwapMax"] == "0"
