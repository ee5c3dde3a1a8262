"""Config loading: shipped environments are valid; each corpus mistake gets its exact message; no tracebacks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from stacks import schema
from stacks.loader import CONFIG_DIR, ConfigError, load_config_file, load_environment
from tests.conftest import SHIPPED_ENVS

INVALID = sorted((Path(__file__).parent / "data" / "invalid").glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    return [line.removeprefix("# expect: ") for line in path.read_text().splitlines() if line.startswith("# expect: ")]


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_each_corpus_mistake_is_reported_once_with_its_message(path):
    with pytest.raises(ConfigError) as caught:
        load_config_file(path, check_name=False)
    message = str(caught.value)
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' line"
    for fragment in expected:
        assert fragment in message
    # One mistake, one report per place it occurs: no cascade of follow-on errors.
    assert message.count("\n      fix: ") == len(expected) or "not valid YAML" in message
    # Every problem line names the file (and a line number when the key exists).
    assert message.startswith(f"{path}") or message.startswith(str(path.relative_to(Path.cwd())))


def test_every_problem_is_reported_at_once_with_file_line_path_and_fix(tmp_path):
    bad = tmp_path / "staging.yaml"
    bad.write_text(
        "name: staging\nregion: us-east-2\navailability_zone: us-west-2b\n"
        "model: {id: meta-llama/Llama-3.1-8B-Instruct, hf_token_secret: t}\n"
        "fleets:\n"
        "  prefill: {role: prefill, instance_type: trn2.48xlarge, tensor_parallel: 64}\n"
        "  decode: {role: decode, instance_type: trn2.48xlarge, tensor_parallel: 32}\n"
        "log_retention_days: 10\n")
    with pytest.raises(ConfigError) as caught:
        load_config_file(bad)
    lines = [line.strip() for line in str(caught.value).splitlines()]
    assert lines[0] == f"{bad}: 3 problems"
    assert f"{bad}:3: availability_zone: 'us-west-2b' is not a zone of region us-east-2" in lines
    assert any(line.startswith(f"{bad}:5: fleets: prefill TP [64] and decode TP [32] differ") for line in lines)
    assert f"{bad}:8: log_retention_days: 10 is not a CloudWatch retention" in lines
    assert sum(line.startswith("fix: ") for line in lines) == 3


def test_file_name_must_match_the_environment_name(tmp_path):
    text = (CONFIG_DIR / "prod.yaml").read_text()
    copy = tmp_path / "staging.yaml"
    copy.write_text(text)
    with pytest.raises(ConfigError, match=re.escape("name: name is 'prod' but the file is staging.yaml")):
        load_config_file(copy)


def test_unknown_environment_lists_the_known_ones():
    with pytest.raises(ConfigError) as caught:
        load_environment("nope")
    assert "no such environment (known: baseline, dev, prod, xpyd)" in str(caught.value)


@pytest.mark.parametrize("env", SHIPPED_ENVS)
def test_shipped_environment_is_valid_against_the_published_schema(env):
    document = yaml.safe_load((CONFIG_DIR / f"{env}.yaml").read_text())
    jsonschema.validate(document, json.loads((CONFIG_DIR / "schema.json").read_text()))


def test_published_schema_is_current():
    assert (CONFIG_DIR / "schema.json").read_text() == schema.schema_text(), "run `make schema`"


def test_published_schema_rejects_what_the_model_rejects():
    document = yaml.safe_load((CONFIG_DIR / "prod.yaml").read_text())
    document["fleets"]["prefill"]["spot"] = True
    with pytest.raises(jsonschema.ValidationError, match="spot"):
        jsonschema.validate(document, json.loads((CONFIG_DIR / "schema.json").read_text()))


def test_shipped_environments_describe_the_seed_setups():
    dev, prod, xpyd, baseline = (load_environment(e) for e in ("dev", "prod", "xpyd", "baseline"))
    colocated = dev.fleets["colocated"]
    assert (colocated.instance_type, colocated.count) == ("trn1.32xlarge", 1)
    assert [(e.role, e.cores) for e in colocated.resolved_endpoints] == [("prefill", "0-15"), ("decode", "16-31")]
    assert prod.model.id == "meta-llama/Llama-3.3-70B-Instruct"
    assert (prod.model.max_num_seqs, prod.model.max_model_len, prod.model.kv_buffer_size) == (8, 8192, 2e11)
    assert {n: (f.instance_type, f.count, f.tensor_parallel) for n, f in prod.fleets.items()} == {
        "prefill": ("trn2.48xlarge", 1, 64), "decode": ("trn2.48xlarge", 1, 64)}
    assert {n: f.count for n, f in xpyd.fleets.items()} == {"prefill": 2, "decode": 1}
    assert baseline.mode == "standard"
    # Standard endpoints are balanced by DiStack's proxy without being asked; DI keeps the DLC's by default.
    assert (baseline.proxy, prod.proxy) == ("distack", "neuron")
    assert [(e.cores, e.port) for e in baseline.fleets["standard"].resolved_endpoints] == [("0-31", 8000),
                                                                                           ("32-63", 8001)]


def test_defaults_fill_endpoint_ranges_and_ports(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "baseline.yaml").read_text())
    del data["fleets"]["standard"]["endpoints"]
    data["fleets"]["standard"]["tensor_parallel"] = 64
    path = tmp_path / "baseline.yaml"
    path.write_text(yaml.safe_dump(data))
    fleet = load_config_file(path).fleets["standard"]
    assert [(e.role, e.cores, e.port) for e in fleet.resolved_endpoints] == [("standard", "0-63", 8000)]
