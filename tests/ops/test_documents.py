"""Every SSM document is a valid 2.2 Command document that only calls node scripts shipped in userdata/, and
every parameter dictl sends passes the document's allowedPattern."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted((ROOT / "stacks" / "documents").glob("*.yaml"))
NODE_PREFIX = "/opt/di/"
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# Shell control syntax means logic in YAML; the steps must only call scripts.
SHELL_LOGIC = re.compile(r"[;&|`<>]|\$\(|\bif\b|\bfor\b|\bwhile\b")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_the_day_two_verbs_are_all_there() -> None:
    assert {p.stem for p in DOCUMENTS} >= {"status", "restart", "collect-logs", "compile", "update", "smoke",
                                           "bench", "drain", "ready"}


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.stem)
def test_document_is_a_2_2_command_document(path: Path) -> None:
    doc = load(path)
    assert doc["schemaVersion"] == "2.2"
    assert doc["description"]
    assert set(doc) <= {"schemaVersion", "description", "parameters", "mainSteps"}
    names = [step["name"] for step in doc["mainSteps"]]
    assert names and len(set(names)) == len(names)
    for step in doc["mainSteps"]:
        assert step["action"] == "aws:runShellScript"
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", step["name"])
        assert step["inputs"]["runCommand"]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.stem)
def test_every_parameter_is_constrained_and_used(path: Path) -> None:
    doc = load(path)
    parameters = doc.get("parameters") or {}
    used = set(PLACEHOLDER.findall(yaml.safe_dump(doc["mainSteps"])))
    assert used == set(parameters), "parameters declared and parameters used must be the same"
    for name, spec in parameters.items():
        assert spec["type"] == "String", name
        assert spec.get("description"), name
        pattern = spec.get("allowedPattern")
        assert pattern and pattern.startswith("^") and pattern.endswith("$"), name
        if "default" in spec:
            assert re.match(pattern, spec["default"]), f"default of {name} fails its own pattern"
        # Nothing a pattern admits may break out of the script's argument list.
        for attack in ("; reboot", "$(id)", "a b", "x' || true '", "`id`"):
            assert not re.match(pattern, attack), f"{name} admits {attack!r}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.stem)
def test_commands_only_call_scripts_shipped_in_userdata(path: Path) -> None:
    for step in load(path)["mainSteps"]:
        for line in step["inputs"]["runCommand"]:
            assert not SHELL_LOGIC.search(PLACEHOLDER.sub("X", line)), f"logic in YAML: {line}"
            program = shlex.split(PLACEHOLDER.sub("X", line))[0]
            assert program.startswith(NODE_PREFIX), f"{line}: not a node script"
            script = ROOT / "userdata" / program[len(NODE_PREFIX):]
            assert script.is_file(), f"{program} is not shipped (no {script.relative_to(ROOT)})"
            assert os.access(script, os.X_OK), f"{script.relative_to(ROOT)} is not executable"


def _patterns() -> dict[str, dict]:
    return {f"di-prod-{p.stem[:1].upper()}{p.stem[1:]}": load(p).get("parameters") or {} for p in DOCUMENTS}


def test_parameters_dictl_sends_pass_the_documents_patterns(world) -> None:
    world.launch(1, "control", "control")
    prefill = world.launch(1, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    runs = [("status",), ("restart", "--clear-kv-lock"), ("restart", "--endpoint", "1"),
            ("rollout", "--image", "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04"),
            ("rollout", "--model", "meta-llama/Llama-3.1-8B-Instruct"), ("logs",), ("compile",), ("compile", "--force"),
            ("smoke",), ("bench",), ("bench", "--run-id", "baseline.1"), ("drain", "--instance-id", prefill[0])]
    for argv in runs:
        code, _, err = world.dictl(argv[0], "--env", "prod", "--quiet", *argv[1:])
        assert code == 0, (argv, err)
    documents = _patterns()
    for command in world.commands():
        declared = documents[command["DocumentName"]]
        sent = {k: v[0] for k, v in command["Parameters"].items()}
        assert set(sent) <= set(declared), command["DocumentName"]
        required = {name for name, spec in declared.items() if "default" not in spec}
        assert required <= set(sent), command["DocumentName"]
        for name, value in sent.items():
            assert re.match(declared[name]["allowedPattern"], value), (command["DocumentName"], name, value)


@pytest.mark.parametrize("image", [
    "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.29.0.1.2.0-neuronx-py314-sdk2.33.0-ubuntu26.04",
    "docker.io/vllm/vllm-openai:v0.11.0@sha256:014a95f21c9edf6abe0aea6b07353f96baa4ec291c427bb1176dc7c93a85845c",
    "registry.local:5000/team/vllm:dev",
    "docker.io/vllm/vllm-openai:v0.11.0@sha256:014a95",  # a cut digest
    "docker.io/vllm/vllm-openai@sha256:014a95f21c9edf6abe0aea6b07353f96baa4ec291c427bb1176dc7c93a85845c",  # no tag
    "vllm-openai:v0.11.0; rm -rf /",
    "",
])
def test_the_update_document_takes_exactly_the_images_dictl_rollout_takes(image: str) -> None:
    from ops.cli import IMAGE

    pattern = load(ROOT / "stacks" / "documents" / "update.yaml")["parameters"]["image"]["allowedPattern"]
    # The document also takes "" (keep the current image); dictl never sends an empty --image.
    assert bool(re.match(pattern, image)) == (image == "" or bool(IMAGE.match(image)))
