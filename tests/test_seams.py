"""The step between the stack and the proxy, per engine: the control host's node.env as synthesized, through what
the control host runs with it (userdata/control.sh write_proxy_env, under bash with fakes on PATH), to the settings
the proxy parses from the resulting proxy.env (diproxy/config.py), as systemd's EnvironmentFile hands them over.

Each side has its own tests; these hold the two ends together, so a value the stack writes but the control host
never forwards (or forwards under a name the proxy does not read) fails here."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from diproxy.config import ENV_PREFIX, HostPort, Settings, parse_settings
from diproxy.protocols import ENGINES
from diproxy.protocols.lmcache import receiver_ports as proxy_receiver_ports
from model import naming
from model.engines import lmcache
from tests.userdata.conftest import FAKES, INSTANCE_ID, SCRIPTS

DATA = Path(__file__).parent / "data"
# One synthesized deployment per engine whose control host runs DiStack's proxy: nixl (config/dev.yaml), the legacy
# neuron-connector with proxy: distack (tests/data/variant.yaml, also synthesized by the template tests), lmcache
# with a decode TP of 2 (tests/data/lmcache-tp2.yaml; the shipped lmcache configs run TP 1, the proxy's default).
CASES = {"nixl": "dev", "neuron-connector": DATA / "variant.yaml", "lmcache": DATA / "lmcache-tp2.yaml"}


def control_node_env(template: dict) -> str:
    """node.env of the control host's launch template, deploy-time references replaced by a placeholder."""
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::EC2::LaunchTemplate":
            continue
        data = resource["Properties"]["LaunchTemplateData"]
        tags = {t["Key"]: t["Value"] for t in data["TagSpecifications"][0]["Tags"]}
        if tags[naming.TAG_ROLE] == naming.ROLE_CONTROL:
            parts = data["UserData"]["Fn::Base64"]["Fn::Join"][1]
            text = "".join(p if isinstance(p, str) else "deploy-time-ref" for p in parts)
            (content,) = [f["content"] for f in yaml.safe_load(text)["write_files"]
                          if f["path"] == naming.NODE_ENV_PATH]
            return content
    raise AssertionError("no control host launch template")


def proxy_env_of(node_env: str, tmp_path: Path) -> dict[str, str]:
    """What write_proxy_env makes of NODE_ENV on the control host, read as systemd's EnvironmentFile reads it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for fake in FAKES.iterdir():
        if not fake.name.startswith("_"):
            (bin_dir / fake.name).symlink_to(fake)
    (tmp_path / "fake-state").mkdir()
    (tmp_path / "node.env").write_text(node_env)
    proc = subprocess.run(
        ["bash", "-c", '. "$DI_HOME/control.sh" && load_node_env && write_proxy_env'],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "DI_HOME": str(SCRIPTS),
             "DI_NODE_ENV": str(tmp_path / "node.env"), "DI_OVERRIDE_ENV": str(tmp_path / "override.env"),
             "DI_INSTANCE_ID": INSTANCE_ID, "FAKE_STATE": str(tmp_path / "fake-state")},
        capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines())


def node_env_values(node_env: str) -> dict[str, str]:
    return dict(shlex.split(line)[0].split("=", 1) for line in node_env.splitlines())


@pytest.fixture(params=sorted(CASES), ids=str)
def seam(request, synth, tmp_path):
    """(config, control node.env values, the proxy's parsed settings) of one engine's synthesized deployment."""
    result = synth(CASES[request.param])
    node_env = control_node_env(result.template_dict)
    settings = parse_settings([], env=proxy_env_of(node_env, tmp_path))
    return result.config, node_env_values(node_env), settings


def test_the_proxy_runs_the_engine_port_etcd_and_key_the_stack_configured(seam):
    config, values, settings = seam
    assert settings.mode == "di"
    assert settings.engine == config.engine and settings.engine in ENGINES
    assert settings.port == naming.PROXY_PORT == int(values["DI_PROXY_PORT"])
    # The control host's own etcd: the address the workers register at (a deploy-time reference in the template).
    assert settings.etcd == HostPort(values["DI_ETCD"].rsplit(":", 1)[0], naming.ETCD_CLIENT_PORT)
    assert settings.etcd_prefix == "/workers/"
    assert settings.aws_region == config.region
    assert settings.api_key_secret == config.proxy_api_key_secret
    # The engine's own proxy settings are ones the proxy reads (an unknown DIPROXY_ name would be ignored in silence).
    flags = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    assert {k for k in values if k.startswith(ENV_PREFIX)} <= flags


def test_lmcache_proxy_names_the_receiver_ports_the_decode_node_listens_on_and_awaits_every_rank(synth, tmp_path):
    result = synth(CASES["lmcache"])
    node_env = control_node_env(result.template_dict)
    settings = parse_settings([], env=proxy_env_of(node_env, tmp_path))
    (decode_fleet,) = result.config.fleets.values()
    tp = decode_fleet.tensor_parallel
    assert tp == 2  # above the proxy's default of 1, so a value lost on the way shows
    # One transfer-done notice per prefill rank (prefill TP = decode TP, model/engines/lmcache.py).
    assert settings.lmcache_decode_tp == tp
    assert settings.lmcache_notify_port == lmcache.PROXY_NOTIFY_PORT
    for ep in decode_fleet.resolved_endpoints:
        if ep.role != "decode":
            continue
        init, alloc = proxy_receiver_ports(ep.port, settings.lmcache_decode_tp, settings.lmcache_init_port_offset,
                                           settings.lmcache_alloc_port_offset, settings.lmcache_rank_port_stride)
        # The ports the stack opened and the node's receiver config lists (userdata/engines/lmcache.sh).
        assert init + alloc == lmcache.receiver_ports(ep.port, tp)
