"""Peer TLS with the real etcd binary (diproxy/testing/etcd_cluster.py, the flags of userdata/di-run
etcd_peer_tls_args): the members form and replicate over HTTPS, a member's peer port admits only a certificate of the
peer CA with the peer Common Name from an address it names, and an etcd presenting a worker's client certificate
cannot join even once it has been added."""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from diproxy.testing.etcd_cluster import PEER_CN, EtcdCluster, Member, make_certificate, write_pem
from diproxy.testing.etcd_server import etcd_binary, free_port


@pytest.fixture(scope="module")
def cluster():
    with EtcdCluster(tls=True) as running:
        yield running


def peer_get(cluster: EtcdCluster, member: Member, cert: Path | None, key: Path | None, path: str = "/members"):
    """GET PATH on MEMBER's peer port, trusting the peer CA and presenting CERT (none when None)."""
    context = ssl.create_default_context(cafile=str(cluster.pki["peer_ca"]))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    with urllib.request.urlopen(f"https://127.0.0.1:{member.peer_port}{path}", timeout=5, context=context) as reply:
        return reply.status, reply.read()


def issued_by_peer_ca(cluster: EtcdCluster, name: str, common_name: str, address: str) -> tuple[Path, Path]:
    """A certificate of the peer CA itself, for COMMON_NAME and ADDRESS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca = x509.load_pem_x509_certificate(cluster.pki["peer_ca"].read_bytes())
    ca_key = serialization.load_pem_private_key(cluster.pki["peer_ca_key"].read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    paths = cluster.directory / f"{name}.pem", cluster.directory / f"{name}-key.pem"
    write_pem(*paths, make_certificate(key, subject, ca.subject, ca_key, ca=False, addresses=(address,)), key)
    return paths


def test_members_replicate_over_https_peer_urls(cluster):
    listed = cluster.etcdctl("member", "list", "-w", "simple")
    assert listed.returncode == 0, listed.stderr
    peer_urls = [line.split(", ")[3] for line in listed.stdout.splitlines()]
    assert len(peer_urls) == 3 and all(u.startswith("https://127.0.0.1:") for u in peer_urls)
    assert cluster.etcdctl("put", "/workers/prefill/10.42.0.5/8000", "x").returncode == 0
    # Every member serves the write from its own copy (a serializable read answers locally): raft carried it.
    for member in cluster.members:
        deadline = time.monotonic() + 10
        while True:
            got = subprocess.run(
                [str(Path(etcd_binary()).with_name("etcdctl")),
                 f"--endpoints=https://127.0.0.1:{member.client_port}", "--cacert", str(cluster.pki["ca"]),
                 "--cert", str(cluster.pki["cert"]), "--key", str(cluster.pki["key"]),
                 "get", "/workers/prefill/10.42.0.5/8000", "--consistency=s", "--print-value-only"],
                capture_output=True, text=True, env={"ETCDCTL_API": "3"})
            if got.stdout.strip() == "x":
                break
            assert time.monotonic() < deadline, f"{member.name} never got the write: {got.stderr}"
            time.sleep(0.02)
    # The peer port speaks TLS only: a plain HTTP request gets no answer (the member closes the connection).
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{cluster.members[0].peer_port}/members", timeout=5)


def test_a_peer_port_admits_only_a_peer_certificate_from_its_own_address(cluster):
    pki, member = cluster.pki, cluster.members[0]
    status, body = peer_get(cluster, member, pki["peer_cert"], pki["peer_key"])
    assert status == 200 and b"m1" in body
    wrong_name = issued_by_peer_ca(cluster, "other-cn", "etcd m3", "127.0.0.1")
    elsewhere = issued_by_peer_ca(cluster, "elsewhere", PEER_CN, "10.42.0.99")
    refused = {
        "a worker's client certificate (client CA, no Common Name)": (pki["worker_cert"], pki["worker_key"]),
        "a member's server certificate (client CA)": (pki["cert"], pki["key"]),
        "the peer CA with another Common Name": wrong_name,
        "the peer CA for another address than the caller's": elsewhere,
        "no certificate": (None, None),
    }
    for what, (cert, key) in refused.items():
        with pytest.raises(OSError):
            peer_get(cluster, member, cert, key)
            pytest.fail(f"{what} was admitted on the peer port")


def test_an_etcd_with_a_workers_certificate_cannot_join_even_once_added():
    with EtcdCluster(tls=True) as cluster:
        intruder = Member("m3", free_port(), free_port())
        cluster.members.append(intruder)
        # Adding a member takes etcd's root, which only control hosts hold; suppose it was done.
        added = cluster.etcdctl("member", "add", "m3", f"--peer-urls={cluster.peer_url(intruder)}")
        assert added.returncode == 0, added.stderr
        log = cluster.directory / "m3.log"
        cluster.start_member(intruder, state="existing", peer_cert="worker", log=log)
        # Every member refuses its certificate, so it cannot even read the cluster's membership and gives up.
        assert intruder.process.wait(timeout=30) != 0
        intruder.process = None
        assert "bad certificate" in log.read_text()
        listed = cluster.etcdctl("member", "list").stdout
        (line,) = [line for line in listed.splitlines() if cluster.peer_url(intruder) in line]
        assert ", unstarted, , " in line
