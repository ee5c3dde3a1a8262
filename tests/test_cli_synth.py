"""The CDK CLI path users run: `cdk synth DiStack -c env=NAME` through cdk.json, success and rejection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CDK = ROOT / "node_modules" / ".bin" / "cdk"


def cdk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if not CDK.exists():
        pytest.fail("node_modules/.bin/cdk is missing: run `make test` (it runs npm ci) rather than pytest alone")
    merged = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.run([str(CDK), *args, "--no-notices"], cwd=ROOT, env=merged, capture_output=True,
                          text=True, timeout=300, check=False)


def test_cdk_cli_synthesizes_the_named_stack(tmp_path):
    run = cdk("synth", "DiStack", "-c", "env=baseline", "--quiet", "-o", str(tmp_path))
    assert run.returncode == 0, run.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["artifacts"]["DiStack"]["properties"]["stackName"] == "di-baseline"
    assert (tmp_path / "DiStack.template.json").exists()
    # The human summary, read back from the synthesized template.
    assert "fleet standard   standard  trn2.48xlarge x 1 (max 1)  TP 16  EFA interfaces 16/instance" in run.stderr
    assert "endpoint 3: standard cores 48-63   port 8003" in run.stderr
    assert f"template: {(tmp_path / 'DiStack.template.json').resolve()}" in run.stderr


def test_cdk_cli_rejects_a_wrong_config_with_its_message_and_exit_1(tmp_path):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    text = (ROOT / "config" / "dev.yaml").read_text()
    assert "    tensor_parallel: 8\n" in text, "the test breaks config/dev.yaml's TP 8 endpoints (cores 0-7, 8-15)"
    (config_dir / "dev.yaml").write_text(text.replace("    tensor_parallel: 8\n", "    tensor_parallel: 24\n"))
    run = cdk("synth", "DiStack", "-c", "env=dev", "--quiet", "-o", str(tmp_path / "out"),
              env={"DISTACK_CONFIG_DIR": str(config_dir)})
    assert run.returncode == 1
    # Every problem at once, each with its file:line, dotted path and fix.
    assert f"{config_dir / 'dev.yaml'}: 2 problems" in run.stderr
    assert (f"{config_dir / 'dev.yaml'}:34: fleets.colocated.endpoints[0].cores: range 0-7 holds 8 cores but "
            "tensor_parallel is 24") in run.stderr
    assert "fix: give it exactly 24 cores, e.g. 8-31" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert not (tmp_path / "out" / "DiStack.template.json").exists()


def test_unknown_environment_is_rejected_before_synthesis(tmp_path):
    # cdk.json's app command run as the CLI runs it: context in CDK_CONTEXT_JSON, output dir in CDK_OUTDIR
    # (aws/aws-cdk packages/aws-cdk-lib/cx-api/lib/cxapi.ts: CONTEXT_ENV, OUTDIR_ENV). The test above already
    # shows the CLI passing the app's exit status and stderr on, so this one skips the CLI's own ~2 s start.
    app = json.loads((ROOT / "cdk.json").read_text())["app"].split()
    run = subprocess.run([str(ROOT / app[0]), *app[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CDK_CONTEXT_JSON": json.dumps({"env": "staging"}),
                              "CDK_OUTDIR": str(tmp_path)}, check=False)
    assert run.returncode == 1
    known = ", ".join(sorted(p.stem for p in (ROOT / "config").glob("*.yaml")))
    assert f"config/staging.yaml: no such environment (known: {known})" in run.stderr
    assert "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []
