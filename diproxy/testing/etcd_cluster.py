"""A throw-away three-member etcd cluster on loopback, optionally with client TLS and user/password auth, for the
control-plane tests: any member can be stopped and started again, as a host of the real cluster would be."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from diproxy.testing.etcd_server import etcd_binary, free_port

ROOT_PASSWORD = "root-password-for-tests"


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    process: subprocess.Popen | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.client_port)


PEER_CN = "di-etcd-peer"  # what every member's peer certificate carries (userdata/lib/etcd.sh ETCD_PEER_CN)


def write_test_pki(directory: Path) -> dict[str, Path]:
    """Two CAs as a deployment has them (userdata/lib/etcd_trust.sh), made with the cryptography package of the test
    set: the client CA, which signs the members' server certificate and the clients' ones (a worker's: no Common
    Name), and the peer CA, which signs the members' peer certificate only (Common Name PEER_CN). Every certificate is
    for 127.0.0.1. Returns the paths: ca/cert/key (--trusted-ca-file, --cert-file, --key-file; also a client's),
    peer_ca/peer_cert/peer_key (the --peer-* files), worker_cert/worker_key (a worker's client certificate), and
    ca_key/peer_ca_key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    paths: dict[str, Path] = {}
    pairs = {"ca": "ca", "cert": "server", "peer_ca": "peer-ca", "peer_cert": "peer", "worker_cert": "worker"}
    for name, stem in pairs.items():
        paths[name] = directory / f"{stem}.pem"
        if name.endswith("_cert") or name == "cert":
            paths[name.replace("cert", "key")] = directory / f"{stem}-key.pem"
    ca_key = ec.generate_private_key(ec.SECP256R1())
    peer_ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distack-test-ca")])
    peer_ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distack-test-peer-ca")])
    ca_cert = make_certificate(ca_key, ca_name, ca_name, ca_key, ca=True)
    peer_ca_cert = make_certificate(peer_ca_key, peer_ca_name, peer_ca_name, peer_ca_key, ca=True)
    issued = {"cert": (ca_name, ca_key, "127.0.0.1"), "peer_cert": (peer_ca_name, peer_ca_key, PEER_CN),
              "worker_cert": (ca_name, ca_key, None)}
    for name, (issuer, issuer_key, common_name) in issued.items():
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else
                            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DiStack")])
        write_pem(paths[name], paths[name.replace("cert", "key")],
                  make_certificate(key, subject, issuer, issuer_key, ca=False, addresses=("127.0.0.1",)), key)
    # The CA keys too, for tests that issue a certificate of their own.
    write_pem(paths["ca"], directory / "ca-key.pem", ca_cert, ca_key)
    write_pem(paths["peer_ca"], directory / "peer-ca-key.pem", peer_ca_cert, peer_ca_key)
    paths["ca_key"], paths["peer_ca_key"] = directory / "ca-key.pem", directory / "peer-ca-key.pem"
    return paths


def make_certificate(key, subject, issuer, issuer_key, *, ca: bool, addresses: tuple[str, ...] = ()):
    """One certificate signed by ISSUER_KEY: a CA, or an end certificate for TLS servers and clients valid for
    ADDRESSES (IP subjectAltNames)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        if addresses:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                               ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pem(cert_path: Path, key_path: Path, certificate, key) -> None:
    from cryptography.hazmat.primitives import serialization

    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


class EtcdCluster:
    """Three members named m0..m2; `tls=True` serves clients over HTTPS only, with client certificates required
    (etcd 3.5 asks for one whenever --trusted-ca-file is set), and the members replicate over HTTPS with peer
    certificates, as a deployment's do (userdata/di-run etcd_peer_tls_args): only a certificate of the peer CA with
    the peer Common Name is admitted on a peer port; `auth=True` enables etcd's auth with a root user (ROOT_PASSWORD)
    before the first test call."""

    def __init__(self, size: int = 3, tls: bool = False, auth: bool = False) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="diproxy-etcd-cluster-"))
        self.members = [Member(f"m{i}", free_port(), free_port()) for i in range(size)]
        self.pki = write_test_pki(self.directory) if tls else None
        self.auth = auth
        self._log = open(self.directory / "etcd.log", "ab")

    @property
    def scheme(self) -> str:
        return "https" if self.pki else "http"

    def peer_url(self, member: Member) -> str:
        return f"{self.scheme}://127.0.0.1:{member.peer_port}"

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={self.peer_url(m)}" for m in self.members)

    def _command(self, member: Member, *, state: str = "new", peer_cert: str = "peer") -> list[str]:
        client_url = f"{self.scheme}://127.0.0.1:{member.client_port}"
        peer_url = self.peer_url(member)
        command = [etcd_binary(), "--name", member.name, "--data-dir", str(self.directory / member.name),
                   "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                   "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                   "--initial-cluster", self.initial_cluster, "--initial-cluster-state", state,
                   "--initial-cluster-token", self.directory.name, "--log-level", "error",
                   # Short raft ticks: a new leader within ~100 ms of losing one, so the tests wait on no timer.
                   "--heartbeat-interval", "10", "--election-timeout", "100",
                   # The cheapest bcrypt cost etcd takes: each user added or authenticated costs ~1 ms, not ~60 ms.
                   "--bcrypt-cost", "4",
                   # A member may be added at once, not only once every member has been connected for etcd's health
                   # interval (5 s): the tests add members right after the cluster formed.
                   "--strict-reconfig-check=false"]
        if self.pki:
            command += ["--cert-file", str(self.pki["cert"]), "--key-file", str(self.pki["key"]),
                        "--trusted-ca-file", str(self.pki["ca"]),
                        "--peer-client-cert-auth", "--peer-trusted-ca-file", str(self.pki["peer_ca"]),
                        "--peer-cert-file", str(self.pki[f"{peer_cert}_cert"]),
                        "--peer-key-file", str(self.pki[f"{peer_cert}_key"]), "--peer-cert-allowed-cn", PEER_CN]
        return command

    def start_member(self, member: Member, *, state: str = "new", peer_cert: str = "peer",
                     log: Path | None = None) -> None:
        """Start MEMBER (again); STATE "existing" for one added to the running cluster; PEER_CERT names the
        certificate of the PKI it presents to its peers; LOG, a file of its own at warning level."""
        command = self._command(member, state=state, peer_cert=peer_cert)
        if log is not None:
            command[command.index("--log-level") + 1] = "warn"
        out = open(log, "ab") if log is not None else self._log
        member.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def stop_member(self, member: Member) -> None:
        if member.process is not None:
            member.process.kill()
            member.process.wait(timeout=5)
            member.process = None

    def _healthy(self, member: Member) -> bool:
        import ssl

        context = None
        if self.pki:
            context = ssl.create_default_context(cafile=str(self.pki["ca"]))
            context.load_cert_chain(str(self.pki["cert"]), str(self.pki["key"]))
        try:
            with urllib.request.urlopen(f"{self.scheme}://127.0.0.1:{member.client_port}/health", timeout=1,
                                        context=context) as reply:
                return reply.status == 200 and b'"true"' in reply.read()
        except OSError:
            return False

    def wait_healthy(self, members: list[Member] | None = None, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        for member in members or self.members:
            while not self._healthy(member):
                if member.process is not None and member.process.poll() is not None:
                    raise RuntimeError(f"etcd {member.name} exited; see {self._log.name}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {member.name} not healthy within {timeout}s; see {self._log.name}")
                time.sleep(0.01)

    def etcdctl(self, *args: str) -> subprocess.CompletedProcess:
        endpoints = ",".join(f"{self.scheme}://127.0.0.1:{m.client_port}" for m in self.members if m.process)
        command = [str(Path(etcd_binary()).with_name("etcdctl")), "--endpoints", endpoints, *args]
        if self.pki:
            command += ["--cacert", str(self.pki["ca"]), "--cert", str(self.pki["cert"]), "--key", str(self.pki["key"])]
        if self.auth and args[:2] != ("user", "add") and args[:2] != ("auth", "enable"):
            command += ["--user", f"root:{ROOT_PASSWORD}"]
        return subprocess.run(command, capture_output=True, text=True, timeout=30,
                              env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})

    def start(self) -> "EtcdCluster":
        for member in self.members:
            self.start_member(member)
        self.wait_healthy()
        if self.auth:
            for args in (("user", "add", f"root:{ROOT_PASSWORD}"), ("auth", "enable")):
                done = self.etcdctl(*args)
                if done.returncode != 0:
                    raise RuntimeError(f"etcdctl {' '.join(args)}: {done.stderr}")
        return self

    def close(self) -> None:
        for member in self.members:
            self.stop_member(member)
        self._log.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
