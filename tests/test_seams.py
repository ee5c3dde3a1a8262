"""The step between the stack and the proxy, per engine: the control host's proxy.env as synthesized (user data writes
it beside node.env; the control host installs it as it is) to the settings the proxy parses from it (diproxy/config.py),
as systemd's EnvironmentFile hands them over.

Each side has its own tests; these hold the two ends together, so a value the stack writes under a name the proxy does
not read, or a proxy option no engine fills, fails here."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from diproxy.config import HostPort, parse_settings
from diproxy.protocols import ENGINES
from diproxy.protocols.lmcache import receiver_ports as proxy_receiver_ports
from model import naming
from model.engines import lmcache

DATA = Path(__file__).parent / "data"
# One synthesized deployment per engine whose control host runs DiStack's proxy: nixl (config/dev.yaml), the legacy
# neuron-connector with proxy: distack (tests/data/variant.yaml, also synthesized by the template tests), lmcache
# with a decode TP of 2 (tests/data/lmcache-tp2.yaml; the shipped lmcache configs run TP 1, the proxy's default).
CASES = {"nixl": "dev", "neuron-connector": DATA / "variant.yaml", "lmcache": DATA / "lmcache-tp2.yaml"}


def control_files(template: dict) -> dict[str, str]:
    """The files user data writes on the control host (path -> content), deploy-time references replaced by a
    placeholder."""
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::EC2::LaunchTemplate":
            continue
        data = resource["Properties"]["LaunchTemplateData"]
        tags = {t["Key"]: t["Value"] for t in data["TagSpecifications"][0]["Tags"]}
        if tags[naming.TAG_ROLE] == naming.ROLE_CONTROL:
            parts = data["UserData"]["Fn::Base64"]["Fn::Join"][1]
            text = "".join(p if isinstance(p, str) else "deploy-time-ref" for p in parts)
            return {f["path"]: f["content"] for f in yaml.safe_load(text)["write_files"]}
    raise AssertionError("no control host launch template")


def env_values(text: str) -> dict[str, str]:
    """KEY='value' lines as systemd's EnvironmentFile and bash read them."""
    return dict(shlex.split(line)[0].split("=", 1) for line in text.splitlines())


@pytest.fixture(params=sorted(CASES), ids=str)
def seam(request, synth):
    """(config, control node.env values, proxy.env values, the proxy's parsed settings) of one engine's deployment."""
    result = synth(CASES[request.param])
    files = control_files(result.template_dict)
    proxy_env = env_values(files[naming.PROXY_ENV_PATH])
    return result.config, env_values(files[naming.NODE_ENV_PATH]), proxy_env, parse_settings([], env=proxy_env)


def test_the_proxy_runs_the_engine_port_etcd_and_key_the_stack_configured(seam):
    config, values, proxy_env, settings = seam
    assert settings.mode == "di"
    assert settings.engine == config.engine and settings.engine in ENGINES
    assert settings.port == naming.PROXY_PORT == int(values["DI_PROXY_PORT"])
    # The registry the control host's own scripts reach (a deploy-time reference in the template).
    assert settings.etcd == HostPort(values["DI_ETCD"].rsplit(":", 1)[0], naming.ETCD_CLIENT_PORT)
    assert settings.etcd_prefix == "/workers/"
    assert settings.aws_region == config.region
    assert settings.api_key_secret == config.proxy_api_key_secret
    # The shipper publishes this deployment's metrics where the control role may write them.
    from diproxy.shipper.settings import parse_settings as shipper_settings
    shipper = shipper_settings([], env=proxy_env)
    assert (shipper.deployment, shipper.namespace) == (config.name, naming.PROXY_METRICS_NAMESPACE)


def test_lmcache_proxy_names_the_receiver_ports_the_decode_node_listens_on_and_awaits_every_rank(synth):
    result = synth(CASES["lmcache"])
    settings = parse_settings([], env=env_values(control_files(result.template_dict)[naming.PROXY_ENV_PATH]))
    (decode_fleet,) = result.config.fleets.values()
    tp = decode_fleet.tensor_parallel
    assert tp == 2  # above the proxy's default of 1, so a value lost on the way shows
    options = settings.engine_options
    # One transfer-done notice per prefill rank (prefill TP = decode TP, model/engines/lmcache.py).
    assert options.decode_tp == tp
    assert options.notify_port == lmcache.PROXY_NOTIFY_PORT
    for ep in decode_fleet.resolved_endpoints:
        if ep.role != "decode":
            continue
        init, alloc = proxy_receiver_ports(ep.port, options.decode_tp, options.init_port_offset,
                                           options.alloc_port_offset, options.rank_port_stride)
        # The ports the stack opened and the node's receiver config lists (userdata/engines/lmcache.sh).
        assert init + alloc == lmcache.receiver_ports(ep.port, tp)


def test_a_control_host_with_neuron_proxy_server_gets_no_proxy_env(synth):
    files = control_files(synth("tutorial").template_dict)
    assert naming.PROXY_ENV_PATH not in files
    assert env_values(files[naming.NODE_ENV_PATH])["DI_PROXY_UNITS"] == "di-proxy.service"
