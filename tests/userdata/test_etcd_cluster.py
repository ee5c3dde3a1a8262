"""The control plane's three-member etcd, with the real etcd binary on loopback: each member's certificates come from
lib/etcd_trust.sh (m0 creates the trust into the fake Secrets Manager), the members start from the flags di-run
gives them (client TLS, peers over https with peer certificates), a replaced member rejoins on its retained data, one
whose data is gone is removed and added back over https peer URLs by lib/members.sh, and no registration is lost
either way."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from diproxy.testing.etcd_server import etcd_binary, free_port
from tests.userdata.conftest import FAKES, REFS, SCRIPTS

ADDRESSES = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
KEY = "/workers/prefill/10.42.0.5/8000"


def etcdctl() -> str:
    return str(Path(etcd_binary()).with_name("etcdctl"))


class Cluster:
    """Three members m0..m2 on loopback addresses, one client and one peer port shared, as on the control hosts; with
    `tls`, as a deployment of several control hosts runs them (DI_ETCD_TLS=1, DI_ETCD_PEER_TLS=1), each member's
    certificates in a directory of its own."""

    def __init__(self, root: Path, tls: bool = True) -> None:
        self.root = root
        self.tls = tls
        self.client_port, self.peer_port = free_port(), free_port()
        self.procs: dict[int, subprocess.Popen] = {}
        # Only the AWS CLI is a fake (the secrets, kept in FAKE_STATE); openssl, python3 and etcdctl are real.
        (root / "bin").mkdir()
        (root / "bin" / "aws").symlink_to(FAKES / "aws")
        (root / "fake-state").mkdir()
        self.env = {"PATH": f"{root / 'bin'}:/usr/bin:/bin", "FAKE_STATE": str(root / "fake-state"),
                    "DI_DEPLOYMENT": "test", "DI_REGION": "us-east-2", "DI_ETCD": f"127.0.0.1:{self.client_port}",
                    "DI_ETCD_PEER_PORT": str(self.peer_port), "DI_ETCDCTL": etcdctl(), "ETCD_JOIN_TIMEOUT": "1s",
                    # Retry the member add often: etcd refuses it until the cluster has been healthy for 5 s.
                    "ETCD_ADD_SLEEP": "0.2",
                    "DI_CONTROL_SLOTS": " ".join(f"eni-{i},vol-{i},{a}" for i, a in enumerate(ADDRESSES)),
                    "DI_RUN_DIR": str(root / "run"), "DI_NODE_ENV": "/nonexistent",
                    "DI_ETCD_TLS": "1" if tls else "0", "DI_ETCD_PEER_TLS": "1" if tls else "0",
                    "DI_ETCD_CA_SECRET": REFS.etcd_ca_secret, "DI_ETCD_CLIENT_SECRET": REFS.etcd_client_secret,
                    "DI_ETCD_SERVER_NAME": "localhost", "ETCD_TRUST_SLEEP": "0", "ETCD_TRUST_WAIT_SECONDS": "5",
                    # Each host's primary address: a connection to another loopback address leaves from 127.0.0.1,
                    # as a control host's leaves from its primary interface, not from its fixed member address.
                    "DI_LOCAL_IP": "127.0.0.1"}

    def member_env(self, index: int) -> dict[str, str]:
        return {**self.env, "DI_ETCD_MEMBER": f"m{index}", "DI_CONTROL_ADDRESS": ADDRESSES[index],
                "DI_ETCD_DIR": str(self.tls_dir(index))}

    def tls_dir(self, index: int) -> Path:
        return self.root / f"tls-m{index}"

    def trust(self, index: int) -> None:
        """What control.sh does before etcd starts: this host's certificates from the trust (m0 creates it)."""
        proc = self.bash(index, f'. "{SCRIPTS}/lib/etcd_trust.sh"; etcd_control_trust')
        assert proc.returncode == 0, proc.stderr

    def data(self, index: int) -> Path:
        return self.root / f"m{index}"

    def bash(self, index: int, code: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f'. "{SCRIPTS}/di-run"; {code}'], env=self.member_env(index),
                              capture_output=True, text=True, timeout=60)

    def cluster_state(self, index: int) -> str:
        proc = self.bash(index, f'etcd_cluster_state "{self.data(index)}"')
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def start(self, index: int, state: str) -> None:
        """Start member INDEX with di-run's member flags (and the state `prepare etcd` chose)."""
        (self.root / "run").mkdir(exist_ok=True)
        (self.root / "run" / "etcd-cluster-state").write_text(state + "\n")
        flags = self.bash(index, "etcd_client_args && etcd_member_args")
        assert flags.returncode == 0, flags.stderr
        address = ADDRESSES[index]
        # The members share the ports on distinct addresses, like three hosts; the wildcard would collide here.
        # The scripts' flags, and test-only timings: raft ticks short enough that a leader is elected within ~100 ms
        # rather than etcd's default second, and the cheapest bcrypt cost for the users' passwords.
        argv = [etcd_binary(), f"--data-dir={self.data(index)}",
                *[a.replace("://0.0.0.0:", f"://{address}:") for a in flags.stdout.split()],
                "--heartbeat-interval=10", "--election-timeout=100", "--bcrypt-cost=4"]
        self.procs[index] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, index: int) -> None:
        self.procs.pop(index).kill()

    def ctl(self, index: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        tls = self.tls_dir(0)
        client = [f"--cacert={tls}/ca.pem", f"--cert={tls}/client.pem", f"--key={tls}/client-key.pem"] if self.tls \
            else []
        proc = subprocess.run([etcdctl(), f"--endpoints={'https' if self.tls else 'http'}://{ADDRESSES[index]}:"
                               f"{self.client_port}", "--dial-timeout=2s", "--command-timeout=3s", *client, *args],
                              capture_output=True, text=True, env={"ETCDCTL_API": "3"})
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def wait_healthy(self, index: int, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while self.ctl(index, "endpoint", "health", check=False).returncode != 0:
            assert time.monotonic() < deadline, f"m{index} not healthy after {seconds}s"
            time.sleep(0.2)

    def members(self, index: int) -> list[dict]:
        return json.loads(self.ctl(index, "member", "list", "-w", "json").stdout)["members"]

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop_all()


def test_three_members_form_a_cluster_and_a_wiped_member_rejoins_with_every_registration(cluster):
    # The three hosts boot together: m0 creates the trust, the others read it; none finds a running member yet, so
    # each starts a new cluster from the same static list.
    cluster.trust(0)
    with ThreadPoolExecutor(3) as hosts:
        list(hosts.map(cluster.trust, (1, 2)))
        assert list(hosts.map(cluster.cluster_state, range(3))) == ["new", "new", "new"]
    for i in range(3):
        cluster.start(i, "new")
    for i in range(3):
        cluster.wait_healthy(i)
    assert sorted(m["name"] for m in cluster.members(0)) == ["m0", "m1", "m2"]
    assert all(u.startswith("https://") for m in cluster.members(0) for u in m["peerURLs"])
    cluster.ctl(0, "put", KEY, "")

    # A host lost with its data (a new volume): the member is removed and added back by the same name and address,
    # with the https peer URL; the new host issues itself new certificates first.
    cluster.kill(1)
    shutil.rmtree(cluster.data(1), ignore_errors=True)
    shutil.rmtree(cluster.tls_dir(1))
    cluster.trust(1)
    # A replacement boots minutes later: the two others have long elected a leader (if m1 led) and answer.
    cluster.wait_healthy(0)
    assert cluster.cluster_state(1) == "existing"
    cluster.start(1, "existing")
    cluster.wait_healthy(1)
    names = sorted(m.get("name", "") for m in cluster.members(0))
    assert names == ["m0", "m1", "m2"]
    (rejoined,) = [m for m in cluster.members(0) if m["name"] == "m1"]
    assert rejoined["peerURLs"] == [f"https://{ADDRESSES[1]}:{cluster.peer_port}"]
    # The rejoined member serves the registration from its own copy (a serializable read answers locally).
    assert KEY in cluster.ctl(1, "get", KEY, "--consistency=s").stdout

    # A host replaced on its retained volume: it restarts from its data, no membership change.
    before = {m["name"]: m["ID"] for m in cluster.members(0)}
    cluster.kill(2)
    assert cluster.cluster_state(2) == "existing"
    cluster.start(2, "existing")
    cluster.wait_healthy(2)
    assert {m["name"]: m["ID"] for m in cluster.members(0)} == before
    assert KEY in cluster.ctl(2, "get", KEY, "--consistency=s").stdout


def test_the_member_flags_name_every_member_by_its_stable_address(cluster):
    proc = cluster.bash(1, "etcd_member_args")
    flags = proc.stdout.split()
    peer = cluster.peer_port
    assert "--name=m1" in flags
    assert f"--listen-peer-urls=https://0.0.0.0:{peer}" in flags
    assert f"--initial-advertise-peer-urls=https://{ADDRESSES[1]}:{peer}" in flags
    assert ("--initial-cluster=" + ",".join(f"m{i}=https://{a}:{peer}" for i, a in enumerate(ADDRESSES))) in flags
    assert "--initial-cluster-token=di-test" in flags
    tls = cluster.tls_dir(1)
    # Peers: authenticated both ways, by the peer CA's certificates with the peer Common Name only.
    assert flags[-5:] == ["--peer-client-cert-auth", f"--peer-trusted-ca-file={tls}/peer-ca.pem",
                          f"--peer-cert-file={tls}/peer.pem", f"--peer-key-file={tls}/peer-key.pem",
                          "--peer-cert-allowed-cn=di-etcd-peer"]


def test_without_peer_tls_the_member_flags_keep_http_peers(tmp_path):
    plain = Cluster(tmp_path, tls=False)
    flags = plain.bash(0, "etcd_member_args").stdout.split()
    assert f"--listen-peer-urls=http://0.0.0.0:{plain.peer_port}" in flags
    assert f"--initial-advertise-peer-urls=http://{ADDRESSES[0]}:{plain.peer_port}" in flags
    assert not [f for f in flags if f.startswith("--peer-")]


def test_members_that_served_http_peers_move_to_https_one_by_one_keeping_quorum_and_data(tmp_path):
    # A deployment made before peers spoke TLS: clients over TLS, peers on http. Its trust has no peer CA yet; the
    # first member to come back adds one (lib/etcd_trust.sh etcd_trust_add_peer_ca, tested in test_etcd_trust.py).
    cluster = Cluster(tmp_path)
    cluster.env["DI_ETCD_PEER_TLS"] = "0"
    try:
        cluster.trust(0)
        with ThreadPoolExecutor(2) as hosts:
            list(hosts.map(cluster.trust, (1, 2)))
        for i in range(3):
            cluster.start(i, "new")
        for i in range(3):
            cluster.wait_healthy(i)
        cluster.ctl(0, "put", KEY, "")
        # The new scripts: each host in turn is replaced on its retained volume and restarts with https peers.
        cluster.env["DI_ETCD_PEER_TLS"] = "1"
        for i in range(3):
            cluster.kill(i)
            cluster.trust(i)
            # The others may still be electing a leader (if it led): etcd_update_peer_url asks again meanwhile.
            assert cluster.cluster_state(i) == "existing"
            (record,) = [m for m in cluster.members((i + 1) % 3) if m["name"] == f"m{i}"]
            assert record["peerURLs"] == [f"https://{ADDRESSES[i]}:{cluster.peer_port}"]
            cluster.start(i, "existing")
            for j in range(3):
                cluster.wait_healthy(j)
            # Raft still carries every write to every member, whichever scheme each one serves.
            cluster.ctl(i, "put", f"/workers/decode/10.42.0.{i}/8000", "")
            for j in range(3):
                assert cluster.ctl(j, "get", "--prefix", "/workers/", "--keys-only", "--consistency=l").stdout.count(
                    "/workers/") == 2 + i
        assert all(u.startswith("https://") for m in cluster.members(0) for u in m["peerURLs"])
    finally:
        cluster.stop_all()
