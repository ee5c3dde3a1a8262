"""di-ready, di-status and di-restart: the node commands the SSM documents call."""

from __future__ import annotations

import json

import pytest

from tests.userdata.conftest import DISTACK_PROXY, SCRIPTS, find_fleet

LEGACY = find_fleet(engine="neuron-connector", role="prefill")[0]
LEGACY_COLOCATED = find_fleet(engine="neuron-connector", role="colocated")


def test_ready_only_when_every_endpoint_answers_200(node):
    n = node(*LEGACY_COLOCATED)
    n.set("health-8001", "503")
    proc = n.run("di-ready", check=False)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "endpoint 0 prefill cores 0-15 port 8000: ready",
        "endpoint 1 decode cores 16-31 port 8001: NOT READY (/health 503)"]
    n.set("health-8001", "200")
    proc = n.run("di-ready")
    assert proc.stdout.count(": ready") == 2


def test_ready_reports_an_endpoint_that_is_not_listening(node):
    n = node("baseline", "standard")
    n.set("health-8000", "000")
    proc = n.run("di-ready", check=False)
    assert proc.returncode == 1
    cores = n.values["DI_ENDPOINTS"].split()[0].split(":")[1]
    assert f"endpoint 0 standard cores {cores} port 8000: NOT READY (/health 000)" in proc.stdout


def test_control_ready_needs_etcd_and_proxy(node):
    n = node(LEGACY)
    assert n.run("di-ready").stdout.splitlines() == ["etcd 10.42.0.10:8989: ready", "proxy :8000: ready (200)"]
    n.set("etcd-down")
    proc = n.run("di-ready", check=False)
    assert proc.returncode == 1 and "etcd 10.42.0.10:8989: NOT READY" in proc.stdout


def test_status_is_one_json_object_describing_the_worker(node):
    n = node(*LEGACY_COLOCATED)
    n.set("health-8001", "503")
    n.set("units-failed", "di-vllm@1.service")
    n.set("docker-ps", "di-vllm-0\tUp 5 minutes\ndi-vllm-1\tExited (1) 2 seconds ago\n")
    status = json.loads(n.run("di-status").stdout)
    assert status["role"] == "colocated" and status["fleet"] == "colocated" and status["mode"] == "disaggregated"
    assert status["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert status["image"].endswith(":0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04")
    assert status["units"] == [{"name": "di-vllm@0.service", "state": "active"},
                               {"name": "di-vllm@1.service", "state": "failed"}]
    assert status["containers"] == [{"name": "di-vllm-0", "status": "Up 5 minutes"},
                                    {"name": "di-vllm-1", "status": "Exited (1) 2 seconds ago"}]
    assert [(e["index"], e["role"], e["cores"], e["port"], e["health"]) for e in status["endpoints"]] == [
        (0, "prefill", "0-15", 8000, "200"), (1, "decode", "16-31", 8001, "503")]
    assert status["health"] == {"8000": "200", "8001": "503"}
    assert status["neuron_devices"] == 16 and status["expected_neuron_devices"] == 16
    assert status["efa"] == {"interfaces": 8, "expected": 8, "uverbs_devices": 2}
    # Registration is looked up in etcd for this host's address and each endpoint's port.
    ranges = [a for a in n.calls("curl") if any(w.endswith("/v3/kv/range") for w in a)]
    assert len(ranges) == 2 and all(e["registered"] is True for e in status["endpoints"])


@pytest.mark.parametrize("env,fleet", [("baseline", "standard"), ("dev", "colocated"), ("prod", "decode")])
def test_status_of_a_worker_with_registrars_lists_each_and_its_etcd_registration(node, env, fleet):
    # Standard endpoints and nixl DI endpoints: di-register keeps each in etcd, and di-status looks it up there.
    n = node(env, fleet)
    n.set("etcd-down")
    status = json.loads(n.run("di-status").stdout)
    count = len(n.values["DI_ENDPOINTS"].split())
    assert [u["name"] for u in status["units"]] == [
        u for i in range(count) for u in (f"di-vllm@{i}.service", f"di-register@{i}.service")]
    assert [e["registered"] for e in status["endpoints"]] == [False] * count
    n.set("etcd-down", "")
    (n.state / "etcd-down").unlink()
    status = json.loads(n.run("di-status").stdout)
    roles = [spec.split(":")[0] for spec in n.values["DI_ENDPOINTS"].split()]
    assert [(e["role"], e["registered"]) for e in status["endpoints"]] == [(r, True) for r in roles]


def test_ready_on_a_nixl_worker_follows_each_endpoints_health(node):
    n = node("dev", "colocated")
    n.set("health-8000", "503")
    proc = n.run("di-ready", check=False)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0].startswith("endpoint 0 prefill") and "NOT READY (/health 503)" in proc.stdout
    (n.state / "health-8000").unlink()
    assert n.run("di-ready").stdout.count(": ready") == 2


def test_standard_mode_control_host_is_ready_only_with_etcd_and_its_proxy(node):
    n = node("baseline")
    assert "proxy :8000: ready" in n.run("di-ready").stdout
    n.set("etcd-down")
    proc = n.run("di-ready", check=False)
    assert proc.returncode == 1 and "etcd 10.42.0.10:8989: NOT READY" in proc.stdout


def test_status_of_the_control_host(node):
    n = node(LEGACY)
    status = json.loads(n.run("di-status").stdout)
    assert status["role"] == "control" and status["etcd_healthy"] is True and status["address"] == "10.42.0.10"
    assert [u["name"] for u in status["units"]] == ["di-etcd.service", "di-proxy.service"]


def test_status_of_a_control_host_with_the_distack_proxy_shows_its_shipper(node):
    n = node(LEGACY)
    n.override(**DISTACK_PROXY)
    n.set("units-failed", "distack-proxy-shipper.service")
    status = json.loads(n.run("di-status").stdout)
    assert status["units"][1:] == [{"name": "distack-proxy.service", "state": "active"},
                                   {"name": "distack-proxy-shipper.service", "state": "failed"}]


def unit_changes(n):
    """The systemctl calls that change a unit (is-active polls left out)."""
    return [c for c in n.calls("systemctl") if c[0] != "is-active"]


def test_restart_drains_first_then_restarts_one_endpoint_or_all(node):
    n = node(*LEGACY_COLOCATED)
    n.run("di-restart", "1")
    assert unit_changes(n) == [["stop", "--no-block", "di-vllm@1.service"], ["restart", "di-vllm@1.service"]]
    # The legacy server registers itself: the drain deleted its key before stopping it.
    assert (n.state / "deregistered").exists()
    n.run("di-restart", "--now")
    assert unit_changes(n)[2:] == [["restart", "di-vllm@0.service", "di-vllm@1.service"]]


def test_restart_with_clear_kv_lock_stops_then_removes_the_lock_then_starts(node):
    n = node(*LEGACY_COLOCATED)
    lock = n.root / "nrt_kv_store_server.lock"
    lock.write_text("")
    n.run("di-restart", "--clear-kv-lock", "--now", "all")
    assert not lock.exists()
    assert n.calls("systemctl") == [["stop", "di-vllm@0.service", "di-vllm@1.service"],
                                    ["start", "di-vllm@0.service", "di-vllm@1.service"]]


def test_restart_of_an_unknown_endpoint_changes_nothing(node):
    n = node(*LEGACY_COLOCATED)
    proc = n.run("di-restart", "5", check=False)
    assert proc.returncode != 0 and "no endpoint '5'" in proc.stderr
    assert n.calls("systemctl") == []


def test_restart_on_the_control_host_names_its_services(node):
    n = node(LEGACY)
    n.run("di-restart", "proxy")
    n.run("di-restart", "all")
    assert n.calls("systemctl") == [["restart", "di-proxy.service"],
                                    ["restart", "di-etcd.service", "di-proxy.service"]]


def test_scripts_the_runbooks_call_are_where_they_expect_them():
    for name in ("di-status", "di-restart", "di-ready", "lib/node.sh"):
        assert (SCRIPTS / name).is_file(), name
