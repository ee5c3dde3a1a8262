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


def write_test_pki(directory: Path) -> dict[str, Path]:
    """A CA and one server certificate for 127.0.0.1 (the cryptography package of the test set); returns the paths
    etcd's --trusted-ca-file, --cert-file and --key-file and a client's CA bundle take."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer_name, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = (builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                             critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                             ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distack-test-ca")])
    ca_cert = certificate("distack-test-ca", ca_key, ca_name, ca_key, ca=True)
    server_cert = certificate("127.0.0.1", server_key, ca_name, ca_key, ca=False)
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server-key.pem"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return paths


class EtcdCluster:
    """Three members named m0..m2; `tls=True` serves clients over HTTPS only, with client certificates required
    (etcd 3.5 asks for one whenever --trusted-ca-file is set); `auth=True` enables etcd's auth with a root user
    (ROOT_PASSWORD) before the first test call."""

    def __init__(self, size: int = 3, tls: bool = False, auth: bool = False) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="diproxy-etcd-cluster-"))
        self.members = [Member(f"m{i}", free_port(), free_port()) for i in range(size)]
        self.pki = write_test_pki(self.directory) if tls else None
        self.auth = auth
        self._log = open(self.directory / "etcd.log", "ab")

    @property
    def scheme(self) -> str:
        return "https" if self.pki else "http"

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)

    def _command(self, member: Member) -> list[str]:
        client_url = f"{self.scheme}://127.0.0.1:{member.client_port}"
        peer_url = f"http://127.0.0.1:{member.peer_port}"
        command = [etcd_binary(), "--name", member.name, "--data-dir", str(self.directory / member.name),
                   "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                   "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                   "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
                   "--initial-cluster-token", self.directory.name, "--log-level", "error",
                   # Short raft ticks: a new leader within ~100 ms of losing one, so the tests wait on no timer.
                   "--heartbeat-interval", "10", "--election-timeout", "100"]
        if self.pki:
            command += ["--cert-file", str(self.pki["cert"]), "--key-file", str(self.pki["key"]),
                        "--trusted-ca-file", str(self.pki["ca"])]
        return command

    def start_member(self, member: Member) -> None:
        member.process = subprocess.Popen(self._command(member), stdout=self._log, stderr=subprocess.STDOUT)

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
