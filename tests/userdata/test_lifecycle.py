"""The node's side of Auto Scaling with fakes on PATH: the drain path step by step and how each step fails, the
termination and launch hooks, and a warm-pool node from its preparation to serving and leaving. The loopback rehearsal
with a real etcd, proxy and streaming clients is tests/rehearsal/test_scale_in.py."""

from __future__ import annotations

import hashlib
import subprocess
import time

import pytest

from tests.tools import needs
from tests.userdata.conftest import INSTANCE_ID, SCRIPTS, find_fleet
from tests.userdata.test_static_checks import verify
from tests.userdata.test_worker_bootstrap import downloads, instance_store

NIXL_COLOCATED = find_fleet(engine="nixl", role="colocated")  # prefill on :8000, decode on :8001
LEGACY_COLOCATED = find_fleet(engine="neuron-connector", role="colocated")
GROUP = "di-test-PrefillFleetGroup-0A1B2C3D"  # what the fake describe-auto-scaling-instances answers


def metrics(running: float, kv: float = 0.0) -> str:
    """vLLM's /metrics as the drain reads it, one series per engine (two engines: the values add up)."""
    return "".join(f'# TYPE {name} gauge\n{name}{{engine="{e}",model_name="m"}} {value / 2}\n'
                   for e in (0, 1) for name, value in (("vllm:num_requests_running", running),
                                                      ("vllm:num_requests_waiting", 0.0),
                                                      ("vllm:kv_cache_usage_perc", kv)))


def lifecycle_calls(n, verb: str) -> list[list[str]]:
    return [a for a in n.calls("aws") if a[:2] == ["autoscaling", verb]]


def result_of(call: list[str]) -> tuple[str, str]:
    return call[call.index("--lifecycle-hook-name") + 1], call[call.index("--lifecycle-action-result") + 1]


def drain(n, *args: str, **env: str) -> subprocess.CompletedProcess:
    return n.run("ops/drain.sh", *args, check=False, DI_LIB_DIR=str(SCRIPTS / "lib"), **env)


def test_drain_deregisters_waits_for_vllm_and_the_held_kv_then_stops_and_completes_the_hook(node):
    n = node(*NIXL_COLOCATED)
    # Prefill: one request running, then none but KV blocks a decode has still to read, then idle.
    n.set("metrics-8000", "\n---\n".join([metrics(1, 0.02), metrics(0, 0.004), metrics(0, 0.004), metrics(0)]))
    n.set("metrics-8001", "\n---\n".join([metrics(2, 0.01), metrics(0)]))  # decode: two streams, then idle
    proc = drain(n, "--lifecycle", "di-termination", "all", "5", LIFECYCLE_HEARTBEAT_SECONDS="0")
    assert proc.returncode == 0, proc.stderr
    calls = n.calls()
    at = lambda match: [i for i, c in enumerate(calls) if match(c)]  # noqa: E731
    registrars = at(lambda c: c[:2] == ["systemctl", "stop"] and c[2].startswith("di-register@"))
    polls = at(lambda c: c[0] == "curl" and c[-1].endswith("/metrics"))
    stops = at(lambda c: c[:3] == ["systemctl", "stop", "--no-block"])
    (complete,) = at(lambda c: c[:3] == ["aws", "autoscaling", "complete-lifecycle-action"])
    # In order: out of etcd, then in-flight and held KV watched to zero, then stopped, then the hook completed.
    assert [calls[i][2] for i in registrars] == ["di-register@0.service", "di-register@1.service"]
    assert max(registrars) < min(polls) and max(polls) < min(stops) and max(stops) < complete
    assert len([i for i in polls if calls[i][-1].endswith(":8000/metrics")]) == 4  # waited through the held KV
    assert [calls[i][-1] for i in stops] == ["di-vllm@0.service", "di-vllm@1.service"]
    assert result_of(calls[complete][1:]) == ("di-termination", "CONTINUE")
    assert calls[complete][calls[complete].index("--auto-scaling-group-name") + 1] == GROUP
    assert calls[complete][calls[complete].index("--instance-id") + 1] == INSTANCE_ID
    assert lifecycle_calls(n, "record-lifecycle-action-heartbeat")  # the hook kept waiting while it drained
    assert proc.stdout.startswith("drained: di-vllm@0.service di-vllm@1.service (deregistered, in-flight finished")
    assert "start again" not in proc.stdout


@pytest.mark.parametrize("flags,env,status,says", [
    ({"etcd-down": "1"}, {}, 2, "failed: 1 deregister"),
    ({"metrics-8001": metrics(3)}, {}, 3, "failed: 2 in-flight timed out after 0s"),
    ({"stuck-di-vllm@1.service": "1"}, {"DRAIN_STOP_GRACE_SECONDS": "0"}, 4, "failed: 3 stop: killed"),
    ({"lifecycle-fails": "1"}, {"RETRY_ATTEMPTS": "2"}, 5, "failed: 4 lifecycle di-termination not completed"),
], ids=["not-deregistered", "in-flight-timeout", "killed", "hook-not-completed"])
def test_each_failed_step_has_its_status_and_the_rest_still_runs(node, flags, env, status, says):
    n = node(*NIXL_COLOCATED)
    for name, value in flags.items():
        n.set(name, value)
    proc = drain(n, "--lifecycle", "di-termination", "all", "0", DRAIN_DEREGISTER_SECONDS="0", **env)
    assert proc.returncode == status, proc.stderr
    assert proc.stdout.startswith("drain partly applied to di-vllm@0.service di-vllm@1.service: done: ")
    assert says in proc.stdout
    # Whatever failed, the servers were stopped and Auto Scaling was told.
    assert ["stop", "--no-block", "di-vllm@1.service"] in n.calls("systemctl")
    assert lifecycle_calls(n, "complete-lifecycle-action")


def test_a_server_that_registers_itself_loses_its_key_and_an_unknown_endpoint_changes_nothing(node):
    n = node(*LEGACY_COLOCATED)
    proc = drain(n, "1")
    assert proc.returncode == 0, proc.stderr
    deletes = [c for c in n.calls("curl") if c[-1].endswith("/v3/kv/deleterange")]
    assert len(deletes) == 1 and not [c for c in n.calls("systemctl") if "di-register@1.service" in c]
    assert "start again with: /opt/di/di-restart 1" in proc.stdout
    proc = drain(n, "7")
    assert proc.returncode == 1 and "no endpoint '7'" in proc.stderr


def run_lifecycle(n, *states: str) -> subprocess.CompletedProcess:
    """di-lifecycle following STATES, each until the node has read it (the fake IMDS records what it served), the
    last one until it exits (at most 10 s). Switching on evidence, not after a fixed pause: a loaded machine may start
    bash slower than any pause."""
    n.set("target-state", states[0])
    proc = subprocess.Popen(["bash", str(SCRIPTS / "di-lifecycle")], env=n.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    served = n.root / "fake-state" / "served-target-state"
    for previous, state in zip(states, states[1:]):
        deadline = time.monotonic() + 10
        while (not served.exists() or served.read_text() != previous) and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.005)
        n.set("target-state", state)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_terminated_drains_the_node_and_completes_the_termination_hook(node):
    n = node(*NIXL_COLOCATED)
    proc = run_lifecycle(n, "InService", "Terminated")
    assert proc.returncode == 0, proc.stderr
    assert "target lifecycle state: InService" in proc.stderr and "target state Terminated: draining" in proc.stderr
    assert [result_of(c) for c in lifecycle_calls(n, "complete-lifecycle-action")] == [("di-termination", "CONTINUE")]
    assert ["stop", "--no-block", "di-vllm@0.service"] in n.calls("systemctl")


def test_a_warm_pool_node_prepares_on_its_root_volume_then_serves_when_started_and_drains_when_it_leaves(node):
    n = node(*NIXL_COLOCATED)
    disks = instance_store(n, "nvme1n1", "nvme2n1")  # free disks: the preparation must not use them
    model = n.values["DI_MODEL_ID"]
    n.set("s3-prefixes", f"models/{model}/")
    n.set("target-state", "Warmed:Stopped")
    n.run("di-bootstrap")
    enabled = [a[-1] for a in n.calls("systemctl") if a[:2] == ["enable", "--now"]]
    # Prepared: image pulled, compiled cache synced, units installed, all on the root volume; no server, and the
    # lifecycle service enabled, which finishes the start when the instance is started into service.
    assert enabled == ["docker", "di-lifecycle.service"]
    assert ["pull", n.values["DI_IMAGE"]] in n.calls("docker")
    assert (n.root / "data" / ".di-root-volume").exists() and (n.root / "state" / "warm-prepared").exists()
    assert n.calls("mdadm") == [] and n.calls("mkfs.ext4") == [] and n.calls("mount") == []
    # Weights in S3 are not kept on the root volume: they are fetched at every start.
    assert not (n.root / "data" / "models" / model / ".complete").exists()
    assert not [a for a in n.calls("aws") if a[:2] == ["s3", "sync"] and "/models/" in a[-2]]
    assert [result_of(c) for c in lifecycle_calls(n, "complete-lifecycle-action")] == [("di-launch", "CONTINUE")]
    assert n.signals() == []  # CloudFormation waits for serving instances, not for the pool
    # Started into service (the instance store is blank again): di-lifecycle runs the bootstrap.
    n.set("image-present")
    n.set("docker-pull-fails", "99")  # the registry away: the image on the root volume is used
    proc = run_lifecycle(n, "InService", "Terminated")
    assert proc.returncode == 0, proc.stderr
    enabled = [a[-1] for a in n.calls("systemctl") if a[:2] == ["enable", "--now"]]
    assert "di-vllm@0.service" in enabled and "di-vllm@1.service" in enabled
    assert "using the copy already on this node" in proc.stderr
    # The weights onto instance store, mounted under the data dir the containers see.
    models = str(n.root / "data" / "models")
    assert n.calls("mdadm")[0][4:] == ["--raid-devices=2", *disks] and n.calls("mount")[-1][-1] == models
    assert [a[-1] for a in n.calls("aws") if a[:2] == ["s3", "sync"] and "/models/" in a[-2]] == [f"{models}/{model}"]
    assert not (n.root / "state" / "warm-prepared").exists()
    completions = [result_of(c) for c in lifecycle_calls(n, "complete-lifecycle-action")]
    assert completions == [("di-launch", "CONTINUE"), ("di-launch", "CONTINUE"), ("di-termination", "CONTINUE")]


def test_weights_only_hugging_face_has_stay_on_the_root_volume_of_a_warm_pool_node(node):
    n = node(*NIXL_COLOCATED)
    instance_store(n, "nvme1n1")
    subprocess.run(["bash", "-c", f'. "{SCRIPTS}/worker.sh"; load_node_env; worker_prepare_warm'], env=n.env,
                   check=True, capture_output=True)
    assert (n.root / "data" / "models" / n.values["DI_MODEL_ID"] / ".complete").exists()
    assert len(downloads(n)) == 1 and n.calls("mdadm") == [] and n.calls("mkfs.ext4") == []


def test_a_node_sent_back_to_the_warm_pool_drains_and_runs_the_bootstrap_again_next_time(node):
    n = node(*NIXL_COLOCATED)
    proc = run_lifecycle(n, "InService", "Warmed:Stopped", "Terminated")
    assert proc.returncode == 0, proc.stderr
    assert "back to the warm pool" in proc.stderr
    assert ["disable", "di-vllm@0.service"] in n.calls("systemctl")
    assert (n.root / "state" / "warm-prepared").exists()
    # Drained once; the later Terminated found nothing serving and only completed its hook.
    assert [result_of(c) for c in lifecycle_calls(n, "complete-lifecycle-action")][:1] == [("di-termination", "CONTINUE")]


def test_the_launch_hook_waits_for_etcd_registration_and_is_abandoned_with_the_reason(node):
    n = node(*NIXL_COLOCATED)
    n.set("etcd-count", "0")  # serving /health, but the proxy cannot find it yet
    proc = n.run("di-bootstrap", check=False, LAUNCH_READY_TIMEOUT_SECONDS="0", LIFECYCLE_HEARTBEAT_SECONDS="0.01")
    assert proc.returncode != 0
    assert lifecycle_calls(n, "record-lifecycle-action-heartbeat")  # kept the hook waiting while it booted
    (abandon,) = lifecycle_calls(n, "complete-lifecycle-action")
    assert result_of(abandon) == ("di-launch", "ABANDON")
    reason = "not serving after 0s"
    assert reason in proc.stderr and "not in etcd yet: endpoint 0 /workers/prefill/10.42.1.5/8000" in proc.stderr
    events = [a for a in n.calls("aws") if a[:2] == ["logs", "put-log-events"]]
    assert reason in events[-1][-1]  # the reason reaches the node log group
    # The servers had started (CloudFormation got SUCCESS then); no FAILURE follows it.
    assert [s[s.index("--status") + 1] for s in n.signals()] == ["SUCCESS"]


def test_downloads_are_checked_against_their_sha256sums(node):
    n = node(*LEGACY_COLOCATED)
    n.set("s3-prefixes", "compiled/")
    key = subprocess.run(["bash", "-c", f'. "{SCRIPTS}/lib/compile.sh"; load_node_env; compiled_key'], env=n.env,
                         capture_output=True, text=True, check=True).stdout.strip()
    compiled = n.root / "data" / "compiled" / key
    compiled.mkdir(parents=True)
    # What the (fake) sync brought down: one file as listed, one not.
    (compiled / "model.neff").write_bytes(b"compiled graph")
    (compiled / "other.neff").write_bytes(b"truncated")
    (compiled / "SHA256SUMS").write_text(f"{hashlib.sha256(b'compiled graph').hexdigest()}  ./model.neff\n"
                                         f"{hashlib.sha256(b'whole graph').hexdigest()}  ./other.neff\n")
    proc = n.run("worker.sh", check=False)
    assert proc.returncode != 0
    assert "./other.neff: FAILED" in proc.stderr and "model.neff" not in proc.stderr.replace("./other.neff", "")
    assert "compiled artifacts in" in proc.stderr and "differ from" in proc.stderr


@needs("systemd-analyze")
def test_the_lifecycle_unit_verifies(tmp_path):
    unit = SCRIPTS / "units" / "di-lifecycle.service"
    proc = verify(tmp_path, [unit], "./di-lifecycle.service")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
