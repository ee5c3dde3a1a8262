"""The control plane's three-member etcd, with the real etcd binary on loopback: the members start from the flags
di-run gives them, a replaced member rejoins on its retained data, one whose data is gone is removed and added back
by lib/members.sh, and no registration is lost either way."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from diproxy.testing.etcd_server import etcd_binary, free_port
from tests.userdata.conftest import SCRIPTS

ADDRESSES = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
KEY = "/workers/prefill/10.42.0.5/8000"


def etcdctl() -> str:
    return str(Path(etcd_binary()).with_name("etcdctl"))


class Cluster:
    """Three members m0..m2 on loopback addresses, one client and one peer port shared, as on the control hosts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.client_port, self.peer_port = free_port(), free_port()
        self.procs: dict[int, subprocess.Popen] = {}
        self.env = {"PATH": "/usr/bin:/bin", "DI_DEPLOYMENT": "test", "DI_ETCD": f"127.0.0.1:{self.client_port}",
                    "DI_ETCD_PEER_PORT": str(self.peer_port), "DI_ETCDCTL": etcdctl(), "ETCD_JOIN_TIMEOUT": "3s",
                    # Retry the member add often: etcd refuses it until the cluster has been healthy for 5 s.
                    "ETCD_ADD_SLEEP": "0.2",
                    "DI_CONTROL_SLOTS": " ".join(f"eni-{i},vol-{i},{a}" for i, a in enumerate(ADDRESSES)),
                    "DI_RUN_DIR": str(root / "run"), "DI_NODE_ENV": "/nonexistent"}

    def member_env(self, index: int) -> dict[str, str]:
        return {**self.env, "DI_ETCD_MEMBER": f"m{index}", "DI_CONTROL_ADDRESS": ADDRESSES[index]}

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
        flags = self.bash(index, "etcd_member_args")
        assert flags.returncode == 0, flags.stderr
        address = ADDRESSES[index]
        argv = [etcd_binary(), f"--data-dir={self.data(index)}",
                f"--listen-client-urls=http://{address}:{self.client_port}",
                f"--advertise-client-urls=http://{address}:{self.client_port}", *flags.stdout.split()]
        # The members share the peer port on distinct addresses, like three hosts; the wildcard would collide here.
        argv = [a.replace("--listen-peer-urls=http://0.0.0.0:", f"--listen-peer-urls=http://{address}:") for a in argv]
        self.procs[index] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, index: int) -> None:
        self.procs.pop(index).kill()

    def ctl(self, index: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([etcdctl(), f"--endpoints=http://{ADDRESSES[index]}:{self.client_port}",
                               "--dial-timeout=2s", "--command-timeout=3s", *args],
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
    # Creation: no other member answers yet, so each starts a new cluster from the same static list.
    assert [cluster.cluster_state(i) for i in range(3)] == ["new", "new", "new"]
    for i in range(3):
        cluster.start(i, "new")
    for i in range(3):
        cluster.wait_healthy(i)
    assert sorted(m["name"] for m in cluster.members(0)) == ["m0", "m1", "m2"]
    cluster.ctl(0, "put", KEY, "")

    # A host lost with its data (a new volume): the member is removed and added back by the same name and address.
    cluster.kill(1)
    shutil.rmtree(cluster.data(1), ignore_errors=True)
    assert cluster.cluster_state(1) == "existing"
    cluster.start(1, "existing")
    cluster.wait_healthy(1)
    names = sorted(m.get("name", "") for m in cluster.members(0))
    assert names == ["m0", "m1", "m2"]
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
    assert f"--initial-advertise-peer-urls=http://{ADDRESSES[1]}:{peer}" in flags
    assert ("--initial-cluster=" + ",".join(f"m{i}=http://{a}:{peer}" for i, a in enumerate(ADDRESSES))) in flags
    assert "--initial-cluster-token=di-test" in flags
