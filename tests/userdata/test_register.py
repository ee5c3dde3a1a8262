"""di-register against a real etcd and a stand-in vLLM /health: the standard-mode registry entry follows health,
leaves on SIGTERM, and comes back after etcd forgets its lease."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.userdata.conftest import SCRIPTS, find_fleet
from diproxy.testing.etcd_server import EtcdServer as HarnessEtcd
from tests.tools import needs
from tests.userdata.test_etcd import real_curl_node

requires_etcd = needs("etcd")

# A TTL far above the polling bounds below: a key gone within PROMPTLY was revoked, not left to expire.
TTL_SECONDS = "10"
INTERVAL_SECONDS = "0.05"
# A few registrar intervals, for the checks that something did not happen meanwhile.
FEW_INTERVALS = 0.25
PROMPTLY = 3.0
LOCAL_IP = "10.42.1.5"  # what real_curl_node sets DI_LOCAL_IP to


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.01)


class EtcdServer(HarnessEtcd):
    """The harness's etcd, which a test can stop, wipe and start again on the same ports, read through the gateway."""

    def wipe(self) -> None:
        shutil.rmtree(self.data_dir / "data", ignore_errors=True)

    def call(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"http://{self.address}{path}", data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)

    def entry(self, key: str) -> dict | None:
        """The key's record as the gateway returns it (value decoded), or None when absent."""
        kvs = self.call("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()}).get("kvs", [])
        if not kvs:
            return None
        return {**kvs[0], "value": json.loads(base64.b64decode(kvs[0]["value"]))}


class Health:
    """A stand-in vLLM: GET /health answers `code`, which the test switches."""

    def __init__(self) -> None:
        self.code = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(owner.code if self.path == "/health" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        # A short poll interval: shutdown() waits for the serving loop's next poll.
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def etcd_server(tmp_path):
    with EtcdServer(tmp_path / "etcd") as server:
        yield server


@pytest.fixture
def health():
    server = Health()
    yield server
    server.close()


class Registrar:
    """di-register running in the background, its log in a file the test reads while it runs."""

    def __init__(self, n, index: str, key: str, log: Path) -> None:
        self.key = key
        self.log_path = log
        self._log = open(log, "w", encoding="utf-8")
        env = {**n.env, "REGISTER_TTL_SECONDS": TTL_SECONDS, "REGISTER_INTERVAL_SECONDS": INTERVAL_SECONDS}
        self.proc = subprocess.Popen(["bash", str(SCRIPTS / "di-register"), index], env=env,
                                     stdout=subprocess.DEVNULL, stderr=self._log)

    def log(self) -> str:
        return self.log_path.read_text()

    def logged(self, text: str) -> str:
        """The log once it holds TEXT (a state change is logged right after the etcd call that made it)."""
        return wait_until(lambda: text in (log := self.log()) and log, PROMPTLY, f"log line {text!r}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def registrar(node, tmp_path):
    """`registrar(etcd_address, health_port[, env, fleet, role])` -> Registrar for endpoint 0 of a worker
    (a standard one unless told)."""
    started = []

    def start(etcd_address: str, port: int, env: str = "baseline", fleet: str = "standard",
              role: str = "standard") -> Registrar:
        n = real_curl_node(node, env, fleet)
        n.override(DI_ETCD=etcd_address, DI_ENDPOINTS=f"{role}:0-15:{port}")
        reg = Registrar(n, "0", f"/workers/{role}/{LOCAL_IP}/{port}", tmp_path / "di-register.log")
        started.append(reg)
        return reg

    yield start
    for reg in started:
        reg.close()


@requires_etcd
def test_the_key_follows_health_with_a_lease(etcd_server, health, registrar):
    health.code = 503
    reg = registrar(etcd_server.address, health.port)
    reg.logged("keeping")
    time.sleep(FEW_INTERVALS)  # a few intervals with /health failing
    assert etcd_server.entry(reg.key) is None

    health.code = 200
    entry = wait_until(lambda: etcd_server.entry(reg.key), PROMPTLY, "registered once healthy")
    assert entry["value"] == {"role": "standard", "port": health.port}
    ttl = etcd_server.call("/v3/lease/timetolive", {"ID": entry["lease"]})
    assert 0 < int(ttl["TTL"]) <= int(TTL_SECONDS) and ttl["grantedTTL"] == TTL_SECONDS

    health.code = 503
    wait_until(lambda: etcd_server.entry(reg.key) is None, PROMPTLY, "deregistered when /health fails")
    reg.logged("because /health = 503")
    # Revoked (etcd answers TTL -1 for a lease it no longer has), not merely left to expire.
    assert etcd_server.call("/v3/lease/timetolive", {"ID": entry["lease"]})["TTL"] == "-1"

    health.code = 200
    back = wait_until(lambda: etcd_server.entry(reg.key), PROMPTLY, "registered again once healthy")
    assert back["lease"] != entry["lease"]
    wait_until(lambda: reg.log().count("] registered /workers/") == 2, PROMPTLY, "second registration logged")
    time.sleep(FEW_INTERVALS)  # a few more healthy intervals
    # State changes only: two registrations and one deregistration, not a line per interval.
    assert reg.log().count("] registered /workers/") == 2 and reg.log().count("] deregistered") == 1
    assert reg.proc.poll() is None


@requires_etcd
def test_sigterm_revokes_the_lease_and_exits_cleanly(etcd_server, health, registrar):
    reg = registrar(etcd_server.address, health.port)
    entry = wait_until(lambda: etcd_server.entry(reg.key), PROMPTLY, "registered")
    started = time.monotonic()
    assert reg.stop() == 0
    assert time.monotonic() - started < PROMPTLY
    assert etcd_server.entry(reg.key) is None
    # Revoked (etcd answers TTL -1 for a lease it no longer has), not left to expire.
    assert etcd_server.call("/v3/lease/timetolive", {"ID": entry["lease"]})["TTL"] == "-1"


@requires_etcd
def test_a_lease_revoked_behind_its_back_is_replaced(etcd_server, health, registrar):
    reg = registrar(etcd_server.address, health.port)
    first = wait_until(lambda: etcd_server.entry(reg.key), PROMPTLY, "registered")
    etcd_server.call("/v3/lease/revoke", {"ID": first["lease"]})
    back = wait_until(lambda: (e := etcd_server.entry(reg.key)) and e["lease"] != first["lease"] and e,
                      PROMPTLY, "registered again under a new lease")
    assert back["value"] == {"role": "standard", "port": health.port}
    reg.logged(f"lease {first['lease']} lost, re-registering")


@requires_etcd
def test_a_key_deleted_under_its_live_lease_is_written_again(etcd_server, health, registrar):
    reg = registrar(etcd_server.address, health.port)
    first = wait_until(lambda: etcd_server.entry(reg.key), PROMPTLY, "registered")
    etcd_server.call("/v3/kv/deleterange", {"key": base64.b64encode(reg.key.encode()).decode()})
    back = wait_until(lambda: etcd_server.entry(reg.key), PROMPTLY, "the key written again")
    assert back["lease"] == first["lease"] and back["value"] == first["value"]
    reg.logged(f"{reg.key} was deleted under live lease {first['lease']}; writing it again")


@requires_etcd
def test_etcd_outage_and_wiped_restart_are_survived(etcd_server, health, registrar):
    reg = registrar(etcd_server.address, health.port)
    wait_until(lambda: etcd_server.entry(reg.key), PROMPTLY, "registered")
    etcd_server.stop()
    reg.logged("unreachable")
    time.sleep(FEW_INTERVALS)  # several intervals of outage: still running, logged once
    assert reg.proc.poll() is None
    assert reg.log().count("unreachable") == 1

    etcd_server.wipe()
    etcd_server.start()
    entry = wait_until(lambda: etcd_server.entry(reg.key), 5, "registered in the new etcd")
    assert entry["value"] == {"role": "standard", "port": health.port}
    assert "lost, re-registering" in reg.logged("reachable again")


@requires_etcd
def test_etcd_down_at_start_is_waited_for(tmp_path, health, registrar):
    server = EtcdServer(tmp_path / "late-etcd")
    reg = registrar(server.address, health.port)
    try:
        reg.logged("unreachable")
        assert reg.proc.poll() is None
        server.start()
        wait_until(lambda: server.entry(reg.key), 5, "registered once etcd is up")
    finally:
        server.close()


@requires_etcd
@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_a_nixl_di_endpoint_is_kept_under_its_role_while_healthy(etcd_server, health, registrar, role):
    # vLLM's NixlConnector registers nothing: the registrar writes the key NeuronConnector would, for the proxy.
    env, fleet = find_fleet(engine="nixl", role=role)
    reg = registrar(etcd_server.address, health.port, env, fleet, role)
    assert reg.key == f"/workers/{role}/{LOCAL_IP}/{health.port}"
    entry = wait_until(lambda: etcd_server.entry(reg.key), PROMPTLY, "registered")
    assert entry["value"] == {"role": role, "port": health.port}
    assert 0 < int(etcd_server.call("/v3/lease/timetolive", {"ID": entry["lease"]})["TTL"]) <= int(TTL_SECONDS)
    health.code = 503
    wait_until(lambda: etcd_server.entry(reg.key) is None, PROMPTLY, "deregistered when /health fails")
    health.code = 200
    wait_until(lambda: etcd_server.entry(reg.key), PROMPTLY, "registered again")
    assert reg.stop() == 0
    assert etcd_server.entry(reg.key) is None


def run_register(n, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / "di-register"), *args], env=n.env, capture_output=True, text=True,
                          timeout=30)


def test_unknown_index_names_the_endpoints(node):
    n = real_curl_node(node, "baseline", "standard")
    proc = run_register(n, "7")
    assert proc.returncode != 0
    assert "no endpoint '7'" in proc.stderr and f"DI_ENDPOINTS='{n.values['DI_ENDPOINTS']}'" in proc.stderr


def test_a_neuron_connector_di_endpoint_is_refused(node):
    # NeuronConnector registers its DI endpoints itself: a second registration would outlive a dead vLLM.
    n = real_curl_node(node, *find_fleet(engine="neuron-connector", role="colocated"))
    proc = run_register(n, "0")
    assert proc.returncode != 0
    assert "endpoint 0 is a prefill endpoint" in proc.stderr and "DI_ENDPOINTS=" in proc.stderr
    assert "engine neuron-connector registers those itself" in proc.stderr


def test_usage_without_an_index(node):
    n = real_curl_node(node, "baseline", "standard")
    proc = run_register(n)
    assert proc.returncode != 0 and "usage: di-register INDEX" in proc.stderr
