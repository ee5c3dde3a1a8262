"""etcd with client TLS and auth, from the node scripts themselves and the real etcd binary: control host m0 creates
the CA and credentials into the (fake) secrets, a member serves with di-run's client flags, the control host sets up
users and roles, and a worker's di-register registers over TLS as its user but cannot write outside /workers/, while
the proxy's user may only read."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest

from diproxy.testing.etcd_server import etcd_binary, free_port
from tests.userdata.conftest import FAKE_COMMANDS, REFS, SCRIPTS, make_node

LOCAL_IP = "10.42.1.5"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def bash(n, libs: str, code: str, **env: str) -> subprocess.CompletedProcess:
    sources = "; ".join(f'. "{SCRIPTS}/lib/{lib}.sh"' for lib in libs.split())
    return subprocess.run(["bash", "-c", f"{sources}; load_node_env; {code}"], env={**n.env, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def secured(node, tmp_path):
    """A control host's trust and a member with di-run's TLS flags, auth set up by the control host's script; returns
    (control node, worker node, etcd address)."""
    port = free_port()
    control = node("prod", fakes=[c for c in FAKE_COMMANDS if c != "curl"])
    control.override(DI_ETCD=f"127.0.0.1:{port}", DI_CONTROL_ADDRESS="127.0.0.1", DI_ETCD_SERVER_NAME="localhost")
    assert control.values["DI_ETCD_TLS"] == "1"
    made = bash(control, "node etcd_trust", "etcd_control_trust")
    assert made.returncode == 0, made.stderr
    flags = bash(control, "node etcd members", f'. "{SCRIPTS}/di-run"; etcd_client_args')
    assert flags.returncode == 0, flags.stderr
    argv = [etcd_binary(), f"--data-dir={tmp_path / 'etcd-data'}", "--log-level=error", "--bcrypt-cost=4",
            f"--listen-peer-urls=http://127.0.0.1:{free_port()}",
            *[f.replace("0.0.0.0", "127.0.0.1") for f in flags.stdout.split()]]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while bash(control, "node etcd", "etcd_healthy").returncode != 0:
            assert server.poll() is None, "etcd exited: " + " ".join(argv)
            assert time.monotonic() < deadline, "etcd never healthy over TLS"
            time.sleep(0.05)
        setup = bash(control, "node etcd_trust", "etcd_auth_setup && etcd_auth_setup")  # twice: idempotent
        assert setup.returncode == 0, setup.stderr
        worker = make_node(tmp_path / "worker", "prod", "prefill", fakes=[c for c in FAKE_COMMANDS if c != "curl"])
        # The worker reads what m0 wrote, through the same (fake) Secrets Manager.
        for secret in control.state.glob("secret-*"):
            (worker.state / secret.name).write_text(secret.read_text())
        worker.env.update({"DI_LOCAL_IP": LOCAL_IP})
        worker.override(DI_ETCD=f"localhost:{port}")
        fetched = bash(worker, "node etcd_trust", "etcd_worker_trust")
        assert fetched.returncode == 0, fetched.stderr
        yield control, worker, f"localhost:{port}"
    finally:
        server.kill()
        server.wait()


def test_m0_creates_the_trust_into_the_secrets_and_workers_get_only_the_registrars_part(secured):
    control, worker, _ = secured
    ca = json.loads((control.state / f"secret-{REFS.etcd_ca_secret.replace('/', '_').replace(':', '_')}").read_text())
    registrar = json.loads((worker.state / f"secret-{REFS.etcd_client_secret.replace('/', '_').replace(':', '_')}")
                           .read_text())
    assert "PRIVATE KEY" in ca["ca_key"] and ca["root_password"] != ca["proxy_password"]
    assert set(registrar) == {"ca_cert", "cert", "key", "user", "password"} and registrar["user"] == "di-register"
    assert ca["ca_key"] not in json.dumps(registrar)
    files = Path(worker.env["DI_ETCD_DIR"])
    assert sorted(p.name for p in files.iterdir()) == ["ca.pem", "client-key.pem", "client.pem", "password", "user"]
    assert oct(files.stat().st_mode & 0o777) == "0o700"
    # Nothing of it reached argv: the only put-secret-value arguments are file:// paths.
    puts = [c for c in control.calls("aws") if c[:2] == ["secretsmanager", "put-secret-value"]]
    assert len(puts) == 2 and all(c[c.index("--secret-string") + 1].startswith("file://") for c in puts)


def test_di_register_registers_over_tls_as_its_user_and_cannot_write_outside_the_prefix(secured):
    control, worker, address = secured
    key = f"/workers/prefill/{LOCAL_IP}/8000"
    reg = bash(worker, "node etcd", f'. "{SCRIPTS}/di-register"; REGISTER_KEY={key}; REGISTER_VALUE=x; '
               'register; [[ -n $LEASE_ID ]] && key_present')
    assert reg.returncode == 0, reg.stderr
    outside = bash(worker, "node etcd", f'etcd_call /v3/kv/put \'{{"key":"{b64("/other")}","value":"{b64("x")}"}}\'')
    assert outside.returncode != 0
    # Health stays readable with auth on (the workers' wait, di-ready and di-status use it).
    assert bash(worker, "node etcd", "etcd_healthy").returncode == 0
    # Without the client certificate, or without a user, nothing is served.
    plain = subprocess.run(["curl", "-sS", "--cacert", f"{worker.env['DI_ETCD_DIR']}/ca.pem", "-X", "POST", "-d",
                            json.dumps({"key": b64(key)}), f"https://{address}/v3/kv/range"],
                           capture_output=True, text=True)
    assert b64(key) not in plain.stdout
    anonymous = bash(worker, "node etcd", f'etcd_request /v3/kv/range \'{{"key":"{b64(key)}"}}\'')
    assert anonymous.returncode != 0


def test_the_proxys_user_reads_the_registry_and_cannot_write(secured):
    control, _, _ = secured
    tls = control.env["DI_ETCD_DIR"]
    Path(tls, "user").write_text("di-proxy")
    Path(tls, "password").write_text(Path(tls, "proxy-password").read_text())
    read = bash(control, "node etcd", f'etcd_call /v3/kv/range \'{{"key":"{b64("/workers/")}"}}\'')
    assert read.returncode == 0, read.stderr
    write = bash(control, "node etcd", f'etcd_call /v3/kv/put \'{{"key":"{b64("/workers/decode/10.0.0.9/8000")}"}}\'')
    assert write.returncode != 0
    # It publishes its pending KV handoffs beside the registry, for the workers' drain.
    publish = bash(control, "node etcd",
                   f'etcd_call /v3/kv/put \'{{"key":"{b64("/handoffs/proxies/p1")}","value":"{b64("1")}"}}\'')
    assert publish.returncode == 0, publish.stderr


def test_a_workers_drain_reads_the_proxies_handoffs_and_cannot_write_them(secured):
    control, worker, _ = secured
    tls = control.env["DI_ETCD_DIR"]
    Path(tls, "user").write_text("di-proxy")
    Path(tls, "password").write_text(Path(tls, "proxy-password").read_text())
    key = b64("/handoffs/pending/10.42.1.5/8000/p1")
    assert bash(control, "node etcd", f'etcd_call /v3/kv/put \'{{"key":"{key}","value":"{b64("2")}"}}\'').returncode == 0
    read = bash(worker, "node etcd", f'etcd_call /v3/kv/range \'{{"key":"{b64("/handoffs/")}","range_end":"{b64("/handoffs0")}"}}\'')
    assert read.returncode == 0 and key in read.stdout, read.stderr
    forged = bash(worker, "node etcd", f'etcd_call /v3/kv/put \'{{"key":"{key}","value":"{b64("0")}"}}\'')
    assert forged.returncode != 0


# Three control hosts: each member's slot (interface, volume, address); this host claimed m1.
SLOTS = "eni-0,vol-0,10.42.0.20 eni-1,vol-1,10.42.0.21 eni-2,vol-2,10.42.0.22"
PRIMARY_IP = "10.42.0.57"


def member_node(tmp_path: Path, env: str, member: str, address: str, host: str = ""):
    """A control host (HOST: a name for its temp root) of a three-member control plane that claimed MEMBER
    (control.sh claim_member)."""
    n = make_node(tmp_path / (host or member), env, None, fakes=["aws"])
    # What member.env holds once the host claimed its slot (lib/members.sh use_slot), read after node.env.
    n.override(DI_CONTROL_SLOTS=SLOTS, DI_CONTROL_ADDRESS=address)
    n.env.update({"DI_ETCD_MEMBER": member, "DI_LOCAL_IP": PRIMARY_IP})
    assert n.values["DI_ETCD_PEER_TLS"] == "1"
    return n


def secret(n, ref: str) -> dict | None:
    path = n.state / f"secret-{ref.replace('/', '_').replace(':', '_')}"
    return json.loads(path.read_text()) if path.exists() else None


def certificate(path: Path):
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def signed_by(cert, ca) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        return True
    except InvalidSignature:
        return False


def peer_facts(cert) -> tuple[str, str, list[str]]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value,
            [str(a) for a in sans.get_values_for_type(x509.IPAddress)] + sans.get_values_for_type(x509.DNSName))


def test_each_member_gets_a_peer_certificate_of_a_peer_ca_that_no_worker_can_read(tmp_path):
    m0 = member_node(tmp_path, "prod", "m0", "10.42.0.20")
    made = bash(m0, "node etcd_trust", "etcd_control_trust")
    assert made.returncode == 0, made.stderr
    ca, registrar = secret(m0, REFS.etcd_ca_secret), secret(m0, REFS.etcd_client_secret)
    assert ca["peer_ca_cert"] != ca["ca_cert"] and "PRIVATE KEY" in ca["peer_ca_key"]
    # The workers' secret has neither CA key nor the peer CA: nothing a worker holds chains to what peers trust.
    assert not {"peer_ca_cert", "peer_ca_key", "ca_key"} & set(registrar)
    # m1, another host, issues its own from the same secret.
    m1 = member_node(tmp_path, "prod", "m1", "10.42.0.21")
    for s in m0.state.glob("secret-*"):
        (m1.state / s.name).write_text(s.read_text())
    made = bash(m1, "node etcd_trust", "etcd_control_trust")
    assert made.returncode == 0, made.stderr
    tls = Path(m1.env["DI_ETCD_DIR"])
    peer, peer_ca, client_ca = (certificate(tls / f) for f in ("peer.pem", "peer-ca.pem", "ca.pem"))
    assert signed_by(peer, peer_ca) and not signed_by(peer, client_ca)
    # Its fixed address, which peers dial, and its primary address, which it dials from; the shared peer name.
    assert peer_facts(peer) == ("di-etcd-peer", "m1", ["10.42.0.21", PRIMARY_IP])
    # The worker's client certificate and the host's own are the client CA's, never the peer CA's.
    worker_cert = certificate_from_text(registrar["cert"])
    assert signed_by(worker_cert, client_ca) and not signed_by(worker_cert, peer_ca)
    assert not signed_by(certificate(tls / "client.pem"), peer_ca)
    # The peer CA's key served once, for this certificate: it is not left on the host's disk.
    assert not (tls / "peer-ca-key.pem").exists() and (tls / "peer-key.pem").exists()
    assert oct(tls.stat().st_mode & 0o777) == "0o700"


def certificate_from_text(text: str):
    from cryptography import x509

    return x509.load_pem_x509_certificate(text.encode())


def test_a_trust_made_before_peers_had_a_ca_gets_one_and_keeps_everything_else(tmp_path):
    # The deployment's trust as m0 wrote it before this change: client CA, passwords, no peer CA.
    old = member_node(tmp_path, "prod", "m0", "10.42.0.20", host="old")
    made = bash(old, "node etcd_trust", "DI_CONTROL_SLOTS= etcd_control_trust")
    assert made.returncode == 0, made.stderr
    before = secret(old, REFS.etcd_ca_secret)
    before = {k: v for k, v in before.items() if not k.startswith("peer_ca")}
    m0 = member_node(tmp_path, "prod", "m0", "10.42.0.20")
    (m0.state / f"secret-{REFS.etcd_ca_secret.replace('/', '_').replace(':', '_')}").write_text(json.dumps(before))
    # Another member waits for m0 to add it, and says what it waits for.
    m2 = member_node(tmp_path, "prod", "m2", "10.42.0.22")
    for s in m0.state.glob("secret-*"):
        (m2.state / s.name).write_text(s.read_text())
    waiting = bash(m2, "node etcd_trust", "etcd_control_trust")
    assert waiting.returncode != 0 and "peer_ca_key" in waiting.stderr
    made = bash(m0, "node etcd_trust", "etcd_control_trust")
    assert made.returncode == 0, made.stderr
    after = secret(m0, REFS.etcd_ca_secret)
    assert {k: v for k, v in after.items() if not k.startswith("peer_ca")} == before
    peer_ca = certificate_from_text(after["peer_ca_cert"])
    assert signed_by(certificate(Path(m0.env["DI_ETCD_DIR"]) / "peer.pem"), peer_ca)
    # Nothing of it reached argv either: the fields went through files.
    puts = [c for c in m0.calls("aws") if c[:2] == ["secretsmanager", "put-secret-value"]]
    assert len(puts) == 1 and before["root_password"] not in json.dumps(puts)


def test_the_legacy_engine_has_peer_certificates_and_no_client_trust(tmp_path):
    m0 = member_node(tmp_path, "legacy-trn1", "m0", "10.42.0.20")
    assert m0.values["DI_ETCD_TLS"] == "0" and m0.values["DI_ETCD_CLIENT_SECRET"] == ""
    made = bash(m0, "node etcd_trust", "etcd_control_trust")
    assert made.returncode == 0, made.stderr
    puts = [c[c.index("--secret-id") + 1] for c in m0.calls("aws") if c[:2] == ["secretsmanager", "put-secret-value"]]
    assert puts == [REFS.etcd_ca_secret]
    assert sorted(p.name for p in Path(m0.env["DI_ETCD_DIR"]).iterdir()) == ["peer-ca.pem", "peer-key.pem", "peer.pem"]
