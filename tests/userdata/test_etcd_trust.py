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
    argv = [etcd_binary(), f"--data-dir={tmp_path / 'etcd-data'}", "--log-level=error",
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
