"""Against a real etcd on loopback: the worker's wait-for-etcd step and the registration check."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request

import pytest

from diproxy.testing.etcd_server import EtcdServer, free_port
from tests.tools import needs
from tests.userdata.conftest import FAKE_COMMANDS, INSTANCE_ID, find_fleet

pytestmark = needs("etcd")


@pytest.fixture
def etcd(tmp_path):
    with EtcdServer(tmp_path / "etcd") as server:
        yield server.address


def register(address: str, key: str) -> None:
    """What NeuronConnector does at start: put /workers/ROLE/IP/PORT (here through the v3 JSON gateway)."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                       "value": base64.b64encode(b'{"connections": []}').decode()}).encode()
    urllib.request.urlopen(urllib.request.Request(f"http://{address}/v3/kv/put", data=body), timeout=5).read()


def real_curl_node(node, env, fleet):
    n = node(env, fleet, fakes=[c for c in FAKE_COMMANDS if c != "curl"])
    n.env.update({"DI_INSTANCE_ID": INSTANCE_ID, "DI_LOCAL_IP": "10.42.1.5"})
    # A plain etcd, as engine neuron-connector keeps it; TLS and auth: tests/userdata/test_etcd_trust.py.
    n.override(DI_ETCD_TLS="0")
    return n


def lib_call(n, snippet: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'. "{n.env["DI_HOME"]}/lib/node.sh"; . "{n.env["DI_HOME"]}/lib/etcd.sh"; load_node_env; {snippet}'],
                          env=n.env, capture_output=True, text=True, timeout=60)


def test_wait_for_etcd_returns_once_the_server_is_healthy(node, etcd):
    n = real_curl_node(node, "prod", "prefill")
    n.override(DI_ETCD=etcd)
    proc = lib_call(n, "wait_for_etcd")
    assert proc.returncode == 0 and f"etcd at {etcd} is healthy" in proc.stderr


def test_wait_for_etcd_gives_up_after_its_bound(node):
    # Nothing listens on the port: the wait polls every 50 ms until its bound (1 s, the shortest the bash
    # SECONDS clock can express), then gives up.
    n = real_curl_node(node, "prod", "prefill")
    n.override(DI_ETCD=f"127.0.0.1:{free_port()}")
    started = time.time()
    proc = lib_call(n, "ETCD_WAIT_SECONDS=1 ETCD_WAIT_SLEEP=0.05 wait_for_etcd")
    assert proc.returncode == 1 and "not healthy after 1s" in proc.stderr
    assert time.time() - started < 20


def test_registration_check_sees_exactly_the_registered_worker(node, etcd):
    n = real_curl_node(node, *find_fleet(engine="neuron-connector", role="colocated"))
    n.override(DI_ETCD=etcd)
    assert lib_call(n, "etcd_registered prefill 10.42.1.5 8000").returncode == 1
    register(etcd, "/workers/prefill/10.42.1.5/8000")
    assert lib_call(n, "etcd_registered prefill 10.42.1.5 8000").returncode == 0
    assert lib_call(n, "etcd_registered decode 10.42.1.5 8001").returncode == 1
    assert lib_call(n, "etcd_registered prefill 10.42.1.6 8000").returncode == 1
    status = json.loads(n.run("di-status").stdout)
    assert [(e["role"], e["registered"]) for e in status["endpoints"]] == [("prefill", True), ("decode", False)]


def test_legacy_worker_bootstrap_against_real_etcd(node, etcd):
    n = real_curl_node(node, *find_fleet(engine="neuron-connector", role="decode"))
    # No launch hook: nothing answers /health here, the boot ends once the server starts.
    n.override(DI_ETCD=etcd, DI_LAUNCH_HOOK="")
    proc = n.run("di-bootstrap", check=False)
    assert proc.returncode == 0, proc.stderr
    enabled = [a[-1] for a in n.calls("systemctl") if a[:2] == ["enable", "--now"]]
    assert enabled == ["docker", "di-vllm@0.service", "di-lifecycle.service"]
    (signal,) = n.signals()
    assert signal[signal.index("--status") + 1] == "SUCCESS"
