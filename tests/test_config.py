"""Config loading: shipped environments are valid; each corpus mistake gets its exact message; no tracebacks."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from model import schema
from model import engines, images, model_paths, node_values
from model.config import DeploymentConfig
from model.loader import CONFIG_DIR, ConfigError, available_environments, load_config_file, load_environment
from tests.conftest import SHIPPED_ENVS
from tests.userdata.conftest import REFS

DLAMI_2404 = "/aws/service/neuron/dlami/base/ubuntu-24.04/latest/image_id"
DLAMI_2204 = "/aws/service/neuron/dlami/base/ubuntu-22.04/latest/image_id"
SEED_IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.9.1-neuronx-py310-sdk2.25.1-ubuntu22.04"
NIXL_IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.29.0.1.2.0-neuronx-py314-sdk2.33.0-ubuntu26.04"
REFS = node_values.DeploymentRefs(stack_name="di-x", control_address="10.42.0.10", bucket_name="b",
                                  node_log_group="/n", container_log_group="/c")

ALL_ENVS = available_environments()
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
    # Plain words, never pydantic's.
    assert not PYDANTIC_WORDS.search(message), PYDANTIC_WORDS.search(message)


PYDANTIC_WORDS = re.compile(r"Input should|valid (dictionary|tuple|list|integer|boolean|string)|Extra inputs|"
                            r"Field required|String should match|Value error")


def _problem_lines(message: str) -> list[int]:
    return [int(m) for m in re.findall(r"^  \S+?\.yaml:(\d+): ", message, re.MULTILINE)]


def test_schema_and_rule_problems_come_together_ordered_by_line():
    path = Path(__file__).parent / "data" / "invalid" / "typo-zone-and-tp-together.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config_file(path, check_name=False)
    message = str(caught.value)
    assert message.splitlines()[0].endswith(": 3 problems")
    # zone (a rule), TP (a rule), the misspelt key (the schema), in the file's order
    assert _problem_lines(message) == [7, 15, 16]


@pytest.mark.parametrize("key, value, reported", [
    ("tensor_parallel", "sixty-four", "fleets.prefill.tensor_parallel: expected a whole number, got 'sixty-four'"),
    # a required key misspelt: the setting is missing, not defaulted
    ("tensor_paralel", 64, "fleets.prefill.tensor_paralel: unknown key 'tensor_paralel'; did you mean"),
])
def test_rules_that_read_a_failed_setting_are_skipped_and_the_others_still_run(tmp_path, key, value, reported):
    data = yaml.safe_load((CONFIG_DIR / "tutorial.yaml").read_text())
    data["availability_zone"] = "eu-west-1a"
    del data["fleets"]["prefill"]["tensor_parallel"]
    data["fleets"]["prefill"][key] = value
    path = _write(tmp_path, "tutorial", data)
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    message = str(caught.value)
    assert reported in message
    assert "availability_zone: 'eu-west-1a' is not a zone of region us-east-2" in message
    # neuron-connector's "prefill TP and decode TP differ" reads the failed TP: skipped, not judged on a stand-in
    assert "differ" not in message and message.count("\n      fix: ") == 2


@pytest.mark.parametrize("text, where, quoted, caret, words", [
    ("name: case\nregion: us-east-2\n  availability_zone: us-east-2a\n", "3:20",
     "     3 |   availability_zone: us-east-2a", "       |                    ^",
     "indented deeper than line 2, which already has a value"),
    ("name: case\nimage: repo/x: latest\n", "2:14", "     2 | image: repo/x: latest", "       |              ^",
     "a value that contains ': ' must be quoted"),
    ("name: case\nfleets: [a, b\nregion: x\n", "2:9", "     2 | fleets: [a, b", "       |         ^",
     "'[' opened here is not closed"),
    ("name: case\n\tregion: x\n", "2:1", "     2 | \tregion: x", "       | ^", "YAML indents with spaces only"),
])
def test_yaml_syntax_errors_give_line_column_the_line_a_caret_and_plain_words(tmp_path, text, where, quoted, caret,
                                                                             words):
    path = tmp_path / "case.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config_file(path, check_name=False)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"{path}:{where}: not valid YAML: ") and words in lines[0]
    assert lines[1:3] == [quoted, caret]
    assert lines[3].startswith("      fix: ")


def test_every_field_of_the_config_model_has_a_description():
    undescribed = [path for path, field in model_paths.fields(DeploymentConfig) if not (field.description or "").strip()]
    assert undescribed == [], "describe these fields (config/schema.json and the fixes quote them)"


def test_a_model_of_unknown_size_is_an_error_until_its_size_is_given(tmp_path):
    path = Path(__file__).parent / "data" / "invalid" / "unknown-model-size.yaml"
    with pytest.raises(ConfigError, match=re.escape("fix: set model.parameters_billion: 405 (the name says 405B")):
        load_config_file(path, check_name=False)
    data = yaml.safe_load(path.read_text())
    data["model"]["parameters_billion"] = 405.85
    with pytest.raises(ConfigError) as caught:
        load_config_file(_write(tmp_path, "case", data))
    assert ("fleets.prefill.tensor_parallel: meta-llama/Llama-3.1-405B-Instruct needs 756 GiB for bfloat16 weights "
            "but 32 cores of trn1.32xlarge hold 512 GiB of HBM") in str(caught.value)


def test_every_problem_is_reported_at_once_with_file_line_path_and_fix(tmp_path):
    bad = tmp_path / "staging.yaml"
    bad.write_text(
        "name: staging\nregion: us-east-2\navailability_zone: us-west-2b\n"
        "model: {id: meta-llama/Llama-3.1-8B-Instruct, hf_token_secret: t}\n"
        "fleets:\n"
        "  prefill: {role: prefill, instance_type: trn2.48xlarge, tensor_parallel: 64}\n"
        "  decode: {role: decode, instance_type: trn2.48xlarge, tensor_parallel: 32}\n"
        "log_retention_days: 10\nengine: neuron-connector\n")
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
    assert "no such environment (known: baseline, dev, gpu-dev, gpu-lmcache, gpu-lmcache-xpyd, gpu-xpyd, legacy-trn1, prod, tutorial, xpyd)" in str(caught.value)


@pytest.mark.parametrize("env", ALL_ENVS)
def test_every_config_file_loads_without_problems_or_warnings(env):
    warnings = []
    load_environment(env, warn=warnings.append)
    assert warnings == []


@pytest.mark.parametrize("env", ALL_ENVS)
def test_shipped_environment_is_valid_against_the_published_schema(env):
    document = yaml.safe_load((CONFIG_DIR / f"{env}.yaml").read_text())
    _published_schema().validate(document)


@functools.cache
def _published_schema() -> jsonschema.protocols.Validator:
    """One validator for the committed schema: jsonschema.validate checks the schema itself on every call."""
    schema_document = json.loads((CONFIG_DIR / "schema.json").read_text())
    validator = jsonschema.validators.validator_for(schema_document)
    validator.check_schema(schema_document)
    return validator(schema_document)


def test_published_schema_is_current():
    assert (CONFIG_DIR / "schema.json").read_text() == schema.schema_text(), "run `make schema`"


def test_published_schema_rejects_what_the_model_rejects():
    document = yaml.safe_load((CONFIG_DIR / "prod.yaml").read_text())
    document["fleets"]["prefill"]["spot"] = True
    with pytest.raises(jsonschema.ValidationError, match="spot"):
        _published_schema().validate(document)


def test_tutorial_reproduces_seed_000_on_the_legacy_engine():
    tutorial = load_environment("tutorial")
    assert (tutorial.engine, tutorial.mode, tutorial.proxy, tutorial.image) == (
        "neuron-connector", "disaggregated", "neuron", SEED_IMAGE)
    assert tutorial.model.id == "meta-llama/Llama-3.3-70B-Instruct"
    assert (tutorial.model.max_num_seqs, tutorial.model.max_model_len) == (8, 8192)
    assert tutorial.engine_module.settings(tutorial).kv_buffer_size == 2e11
    assert {n: (f.instance_type, f.count, f.tensor_parallel, [(e.cores, e.port) for e in f.resolved_endpoints])
            for n, f in tutorial.fleets.items()} == {"prefill": ("trn2.48xlarge", 1, 64, [("0-63", 8000)]),
                                                     "decode": ("trn2.48xlarge", 1, 64, [("0-63", 8000)])}
    # The image is Ubuntu 22.04, so are the workers: the frozen 22.04 base DLAMI.
    assert tutorial.worker_ami.launch_template_image == f"resolve:ssm:{DLAMI_2204}"
    values = node_values.worker_values(tutorial, "prefill", REFS)
    assert values["DI_KV_BUFFER_SIZE"] == "2e+11" and "DI_KV_CONNECTOR" not in values


def test_nixl_environments_follow_the_llama_70b_recipe_on_trn2():
    four_tp16 = [("0-15", 8000), ("16-31", 8001), ("32-47", 8002), ("48-63", 8003)]
    for env in ("prod", "xpyd", "baseline"):
        config = load_environment(env)
        assert (config.engine, config.image, config.proxy) == ("nixl", NIXL_IMAGE, "distack"), env
        assert config.worker_ami.launch_template_image == f"resolve:ssm:{DLAMI_2404}"
        assert (config.model.id, config.model.max_model_len, config.model.max_num_seqs) == (
            "meta-llama/Llama-3.3-70B-Instruct", 16384, 8)
        settings = config.nixl
        assert (settings.max_num_batched_tokens, settings.block_size, settings.optimization_level) == (8192, 128, 2)
        assert settings.neuron_config.as_json() == ('{"kv_segment_size_buckets":[8192],'
                                                    '"num_batched_tokens_buckets":[8192],"num_seqs_buckets":[8]}')
        for fleet in config.fleets.values():
            assert (fleet.instance_type, fleet.tensor_parallel) == ("trn2.48xlarge", 16)
            assert [(e.cores, e.port) for e in fleet.resolved_endpoints] == four_tp16
    assert {n: f.count for n, f in load_environment("xpyd").fleets.items()} == {"prefill": 2, "decode": 1}
    assert load_environment("baseline").mode == "standard"


def test_dev_is_colocated_1p1d_on_one_trn2_and_legacy_trn1_keeps_the_trn1_setup():
    dev, legacy = load_environment("dev"), load_environment("legacy-trn1")
    (colocated,) = dev.fleets.values()
    assert (dev.engine, colocated.instance_type, colocated.count) == ("nixl", "trn2.48xlarge", 1)
    assert [(e.role, e.cores, e.port) for e in colocated.resolved_endpoints] == [("prefill", "0-7", 8000),
                                                                                ("decode", "8-15", 8001)]
    (old,) = legacy.fleets.values()
    assert (legacy.engine, legacy.image, old.instance_type) == ("neuron-connector", SEED_IMAGE, "trn1.32xlarge")
    assert [(e.role, e.cores) for e in old.resolved_endpoints] == [("prefill", "0-15"), ("decode", "16-31")]


def test_nixl_worker_node_env_carries_the_engine_contract():
    values = node_values.worker_values(load_environment("prod"), "decode", REFS)
    assert {k: values[k] for k in values if k in NIXL_KEYS} == {
        "DI_ENGINE": "nixl", "DI_KV_CONNECTOR": "NixlConnector", "DI_NIXL_SIDE_CHANNEL_BASE_PORT": "5559",
        "DI_MAX_NUM_BATCHED_TOKENS": "8192", "DI_BLOCK_SIZE": "128", "DI_OPTIMIZATION_LEVEL": "2",
        "DI_NEURON_CONFIG": '{"kv_segment_size_buckets":[8192],"num_batched_tokens_buckets":[8192],'
                            '"num_seqs_buckets":[8]}',
        "DI_COMPILE_TIMEOUT_SECONDS": "2400", "DI_READY_TIMEOUT_SECONDS": "3600",
        "DI_EXECUTE_MODEL_TIMEOUT_SECONDS": "1200", "DI_ENDPOINTS": "decode:0-15:8000 decode:16-31:8001 "
                                                                   "decode:32-47:8002 decode:48-63:8003"}
    assert "DI_KV_BUFFER_SIZE" not in values


NIXL_KEYS = {"DI_ENGINE", "DI_KV_CONNECTOR", "DI_NIXL_SIDE_CHANNEL_BASE_PORT", "DI_MAX_NUM_BATCHED_TOKENS",
             "DI_BLOCK_SIZE", "DI_OPTIMIZATION_LEVEL", "DI_NEURON_CONFIG", "DI_COMPILE_TIMEOUT_SECONDS",
             "DI_READY_TIMEOUT_SECONDS", "DI_EXECUTE_MODEL_TIMEOUT_SECONDS", "DI_ENDPOINTS"}


def _write(tmp_path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**data, "name": name}))
    return path


def test_unset_nixl_settings_reach_the_node_as_empty_values_and_gpt_oss_gets_neuron_nixl_connector(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "dev.yaml").read_text())
    del data["nixl"]
    data["model"] = {"id": "openai/gpt-oss-20b"}
    config = load_config_file(_write(tmp_path, "dev", data))
    values = node_values.worker_values(config, "colocated", REFS)
    assert values["DI_KV_CONNECTOR"] == "NeuronNixlConnector"
    assert [values[k] for k in ("DI_MAX_NUM_BATCHED_TOKENS", "DI_BLOCK_SIZE", "DI_OPTIMIZATION_LEVEL",
                                "DI_NEURON_CONFIG")] == ["", "", "", ""]
    # The tutorial's timeouts (tutorial-di-1p1d-xpyd.md L105-114) unless set.
    assert [values[k] for k in ("DI_COMPILE_TIMEOUT_SECONDS", "DI_READY_TIMEOUT_SECONDS",
                                "DI_EXECUTE_MODEL_TIMEOUT_SECONDS")] == ["2400", "1800", "1200"]


def test_hybrid_tp_is_allowed_on_nixl_and_refused_on_the_legacy_engine(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "prod.yaml").read_text())
    data["fleets"]["decode"].update(tensor_parallel=32, endpoints=[{"cores": "0-31"}, {"cores": "32-63"}])
    assert load_config_file(_write(tmp_path, "prod", data)).fleets["decode"].tensor_parallel == 32
    legacy = {**data, "engine": "neuron-connector"}
    del legacy["nixl"]
    with pytest.raises(ConfigError, match=re.escape("fleets: prefill TP [16] and decode TP [32] differ")):
        load_config_file(_write(tmp_path, "prod", legacy))


def test_worker_ami_follows_the_image_ubuntu_and_a_set_one_wins(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "prod.yaml").read_text())
    data["worker_ami"] = {"root_device_name": "/dev/sda1"}
    assert load_config_file(_write(tmp_path, "prod", data)).worker_ami.ssm_parameter == DLAMI_2404
    data["worker_ami"] = {"ssm_parameter": "/team/neuron-ami"}
    assert load_config_file(_write(tmp_path, "prod", data)).worker_ami.launch_template_image == (
        "resolve:ssm:/team/neuron-ami")
    data["worker_ami"] = {"image_id": "ami-0123456789abcdef0"}
    assert load_config_file(_write(tmp_path, "prod", data)).worker_ami.launch_template_image == "ami-0123456789abcdef0"
    legacy = yaml.safe_load((CONFIG_DIR / "tutorial.yaml").read_text())
    legacy["image"] = images.REPOSITORY + ":0.9.1-neuronx-py311-sdk2.26.1-ubuntu22.04"
    assert load_config_file(_write(tmp_path, "tutorial", legacy)).worker_ami.ssm_parameter == DLAMI_2204


def test_each_engine_defaults_its_image_and_proxy(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "tutorial.yaml").read_text())
    del data["image"]
    legacy = load_config_file(_write(tmp_path, "tutorial", data))
    assert (legacy.image, legacy.proxy) == (SEED_IMAGE, "neuron")
    data.update(engine="nixl")
    del data["neuron_connector"]
    nixl = load_config_file(_write(tmp_path, "tutorial", data))
    assert (nixl.image, nixl.proxy, nixl.worker_ami.ssm_parameter) == (NIXL_IMAGE, "distack", DLAMI_2404)
    assert engines.DEFAULT == "nixl"


def test_unlisted_image_with_the_override_loads_with_a_warning_naming_its_line(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "dev.yaml").read_text())
    # A tag no source names yet: its host is the config's to say (the tag's Ubuntu is the container's).
    data.update(image=images.REPOSITORY + ":0.30.0.1.3.0-neuronx-py314-sdk2.34.0-ubuntu26.04", image_unlisted=True,
                worker_ami={"ssm_parameter": DLAMI_2404})
    path = _write(tmp_path, "dev", data)
    warnings = []
    config = load_config_file(path, warn=warnings.append)
    assert config.worker_ami.ssm_parameter == DLAMI_2404
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("image:"))
    (warning,) = warnings
    assert warning.startswith(f"{path}:{line}: warning: image: '{data['image']}' is not in DiStack's image catalog; "
                              f"accepted because image_unlisted is true (worker AMI {DLAMI_2404} as set)")


def test_every_catalog_image_is_accepted_by_its_engines_and_refused_with_a_reason_by_the_others():
    for image in images.IMAGES.values():
        for name in engines.NAMES:
            assert bool(image.refusal(name)) == (name not in image.engines), (image.tag, name)
    assert [i.tag for i in images.for_engine("nixl")] == ["0.29.0.1.2.0-neuronx-py314-sdk2.33.0-ubuntu26.04",
                                                          "0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04"]
    assert sorted(i.sdk for i in images.for_engine("neuron-connector")) == ["2.25.0", "2.25.1", "2.26.1"]


def test_defaults_fill_endpoint_ranges_and_ports(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "baseline.yaml").read_text())
    del data["fleets"]["standard"]["endpoints"]
    data["fleets"]["standard"]["tensor_parallel"] = 64
    path = tmp_path / "baseline.yaml"
    path.write_text(yaml.safe_dump(data))
    fleet = load_config_file(path).fleets["standard"]
    assert [(e.role, e.cores, e.port) for e in fleet.resolved_endpoints] == [("standard", "0-63", 8000)]


def test_kv_buffer_size_at_its_old_place_still_loads_with_a_warning_naming_its_new_one(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "tutorial.yaml").read_text())
    size = data.pop("neuron_connector")["kv_buffer_size"]
    data["model"]["kv_buffer_size"] = size / 2  # an old-style config, before the engine had its section
    warnings: list[str] = []
    old = load_config_file(_write(tmp_path, "tutorial", data), warn=warnings.append)
    assert old.engine_module.settings(old).kv_buffer_size == size / 2
    assert node_values.worker_values(old, "prefill", REFS)["DI_KV_BUFFER_SIZE"] == f"{size / 2:g}"
    (warning,) = warnings
    assert "model.kv_buffer_size: deprecated: kv_buffer_size moved to neuron_connector.kv_buffer_size" in warning
    assert "tutorial.yaml:" in warning
    data["neuron_connector"] = {"kv_buffer_size": size}
    with pytest.raises(ConfigError) as raised:
        load_config_file(_write(tmp_path, "tutorial", data))
    assert "model.kv_buffer_size: set twice: here and at neuron_connector.kv_buffer_size" in str(raised.value)
