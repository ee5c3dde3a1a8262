"""`routing:` in a deployment's config: its defaults reach proxy.env, where the proxy's parser reads them as the
settings it routes with, and the rules refuse what the proxy or the workers cannot serve, naming file, field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from diproxy.config import parse_settings
from model import node_values
from model.loader import CONFIG_DIR, ConfigError, load_config_file


def _config(tmp_path: Path, name: str = "prod", **changes) -> Path:
    data = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    data.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _proxy_settings(config):
    env = node_values.proxy_values(config, {"DI_ETCD": "10.0.0.5:2379", "DI_PROXY_PORT": "8000",
                                            "DI_REGION": "us-east-1", "DI_PROXY_API_KEY_SECRET": "",
                                            "DI_DEPLOYMENT": "prod"})
    return parse_settings([], env={k: v for k, v in env.items() if v != ""})


def test_the_default_routing_reaches_the_proxy_as_approximate_with_the_pd_decider(tmp_path):
    settings = _proxy_settings(load_config_file(_config(tmp_path)))
    assert settings.routing == "approximate" and settings.routing_epsilon == 0.25
    assert settings.pd_max_uncached_tokens == 2048 and settings.pd_max_uncached_ratio == 0.7
    assert settings.migration_limit == 3 and settings.routing_capacity == 16384


def test_a_deployments_own_routing_reaches_the_proxy(tmp_path):
    routing = {"mode": "blind", "pd_decider": {"enabled": False}, "migration_limit": 0, "capacity": 4096,
               "epsilon": 0.5}
    settings = _proxy_settings(load_config_file(_config(tmp_path, routing=routing)))
    assert (settings.routing, settings.pd_max_uncached_tokens, settings.migration_limit) == ("blind", 0, 0)
    assert settings.routing_capacity == 4096 and settings.routing_epsilon == 0.5


@pytest.mark.parametrize("routing, expected", [
    ({"mode": "precise"}, ["routing.mode: precise routing needs the `tokenizers` package",
                           "set routing.mode: approximate"]),
    ({"mode": "blind", "pd_decider": {"enabled": True}}, ["routing.pd_decider: blind routing knows no worker's",
                                                          "routing.pd_decider.enabled: false"]),
    ({"epsilon": -1, "pd_decider": {"max_uncached_ratio": 2}}, ["routing.epsilon", "routing.pd_decider."
                                                                                   "max_uncached_ratio"]),
    ({"mode": "smart"}, ["routing.mode"]),
])
def test_routing_the_proxy_cannot_serve_is_refused_with_every_problem_named(tmp_path, routing, expected):
    with pytest.raises(ConfigError) as caught:
        load_config_file(_config(tmp_path, routing=routing))
    message = str(caught.value)
    assert "prod.yaml" in message
    for part in expected:
        assert part in message


def test_migration_is_refused_where_the_engines_protocol_cannot_migrate(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config_file(_config(tmp_path, "gpu-lmcache", routing={"migration_limit": 2}))
    assert "routing.migration_limit: engine lmcache's protocol does not carry streams" in str(caught.value)
    load_config_file(_config(tmp_path, "gpu-lmcache", routing={"migration_limit": 0}))


def test_routing_is_refused_with_the_neuron_proxy_which_does_none(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config_file(_config(tmp_path, "legacy-trn1", routing={"mode": "approximate"}))
    assert "routing: the neuron proxy does no cache-aware routing" in str(caught.value)
    assert "remove routing, or set proxy: distack" in str(caught.value)
