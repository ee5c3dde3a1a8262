"""The CDK CLI path users run, through the Makefile: `make synth ENV=NAME` (cdk synth DiStack -c env=NAME into cdk.out/NAME/, stack di-NAME),
success and rejection; and the AWS targets' guards (ENV=, CONFIRM=), run against a fake `cdk`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CDK = ROOT / "node_modules" / ".bin" / "cdk"
# The set-up stamps: never remade here (make -o), so a test never installs anything; `make test` set them up.
SETUP_STAMPS = (".venv/.synth-deps", ".venv/.ops-deps", "node_modules/.deps")


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if not CDK.exists():
        pytest.fail("node_modules/.bin/cdk is missing: run `make test` (it runs npm ci) rather than pytest alone")
    keep = [f"-o{stamp}" for stamp in SETUP_STAMPS]
    merged = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    for variable in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "ENV", "CONFIRM", "NO_ROLLBACK"):
        merged.pop(variable, None)  # as a user's shell runs it, not as a sub-make of `make test`
    return subprocess.run(["make", "--no-print-directory", *keep, *args], cwd=ROOT, env=merged, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)


def test_make_synth_selects_di_name_into_the_environments_own_assembly(tmp_path):
    run = make("synth", "ENV=baseline", f"OUT={tmp_path}")
    assert run.returncode == 0, run.stderr
    # `cdk synth DiStack -c env=baseline`: the CLI found the stack by its construct id (the same for every
    # environment), named di-baseline in CloudFormation, and wrote cdk.out/baseline/ only.
    assembly = tmp_path / "baseline"
    assert [p.name for p in tmp_path.iterdir()] == ["baseline"]
    artifact = json.loads((assembly / "manifest.json").read_text())["artifacts"]["DiStack"]
    # The CLI matches the construct path (displayName); stackName is left out when it equals the artifact id.
    assert artifact["displayName"] == "DiStack"
    assert artifact["properties"]["stackName"] == "di-baseline"
    assert (assembly / "DiStack.template.json").exists()
    # cdk.json sets every feature flag the pinned aws-cdk-lib recommends, so the CLI has nothing to say about them.
    assert "feature flags" not in run.stdout + run.stderr
    # The human summary, read back from the synthesized template.
    assert "fleet standard   standard  trn2.48xlarge x 1 (max 1)  TP 16  EFA interfaces 16/instance" in run.stderr
    assert "endpoint 3: standard cores 48-63   port 8003" in run.stderr
    assert f"template: {(assembly / 'DiStack.template.json').resolve()}" in run.stderr


def test_a_failed_synth_reports_the_config_and_keeps_the_last_good_assembly(tmp_path):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    text = (ROOT / "config" / "dev.yaml").read_text()
    assert "    tensor_parallel: 8\n" in text, "the test breaks config/dev.yaml's TP 8 endpoints (cores 0-7, 8-15)"
    (config_dir / "dev.yaml").write_text(text.replace("    tensor_parallel: 8\n", "    tensor_parallel: 24\n"))
    last_good = tmp_path / "out" / "dev"
    last_good.mkdir(parents=True)
    (last_good / "DiStack.template.json").write_text('{"last": "good"}')
    run = make("synth", "ENV=dev", f"OUT={tmp_path / 'out'}", env={"DISTACK_CONFIG_DIR": str(config_dir)})
    # cdk synth exits 1 (make shows it as `Error 1`); make itself exits 2, as for any failed command.
    assert run.returncode == 2
    assert "synth] Error 1" in run.stderr
    # Every problem at once, each with its file:line, dotted path and fix.
    line = text.splitlines().index("        cores: 8-15") + 1
    assert f"{config_dir / 'dev.yaml'}: 2 problems" in run.stderr
    assert (f"{config_dir / 'dev.yaml'}:{line}: fleets.colocated.endpoints[1].cores: range 8-15 holds 8 cores but "
            "tensor_parallel is 24") in run.stderr
    assert "fix: give it exactly 24 cores, e.g. 8-31" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert [p.name for p in last_good.iterdir()] == ["DiStack.template.json"]
    assert (last_good / "DiStack.template.json").read_text() == '{"last": "good"}'
    assert f"synth failed; {last_good}/ still holds the last good synth" in run.stderr


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


@pytest.fixture
def fake_cdk(tmp_path):
    """A `cdk` that records its arguments, one line per call, and fails `deploy` when FAKE_CDK_FAIL says so."""
    log = tmp_path / "cdk-calls"
    script = tmp_path / "cdk"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n'
                      'if [ "$1" = "$FAKE_CDK_FAIL" ]; then echo "cdk: $1 failed" >&2; exit 1; fi\n')
    script.chmod(0o755)

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return script, calls


def test_aws_targets_need_env_and_destroy_needs_confirm_then_runs_without_a_terminal(fake_cdk, tmp_path):
    cdk, calls = fake_cdk
    known = " ".join(sorted(p.stem for p in (ROOT / "config").glob("*.yaml")))
    for target in ("deploy", "diff", "destroy", "bootstrap"):
        run = make(target, f"CDK={cdk}")
        assert run.returncode == 2, target
        assert f"make {target}: which environment? add ENV=NAME, one of: {known}" in run.stderr
    refused = make("destroy", "ENV=prod", "CONFIRM=dev", f"CDK={cdk}")
    assert refused.returncode == 2
    assert "to go ahead: make destroy ENV=prod CONFIRM=prod" in refused.stderr
    assert calls() == []  # nothing reached the CDK CLI
    done = make("destroy", "ENV=prod", "CONFIRM=prod", f"CDK={cdk}", f"OUT={tmp_path}")
    assert done.returncode == 0, done.stderr
    # stdin is /dev/null: --force, so the CLI asks nothing; it destroys the assembly synth just wrote.
    assert [c.split(" --no-notices")[0] for c in calls()] == [
        f"synth DiStack -c env=prod -o {tmp_path}/prod --quiet", f"destroy DiStack --app {tmp_path}/prod --force"]
    assert "dictl destroy --env prod" in done.stderr


def test_deploy_offers_no_rollback_when_it_fails(fake_cdk, tmp_path):
    cdk, calls = fake_cdk
    failed = make("deploy", "ENV=dev", f"CDK={cdk}", f"OUT={tmp_path}", env={"FAKE_CDK_FAIL": "deploy"})
    assert failed.returncode == 2
    assert "make deploy ENV=dev NO_ROLLBACK=1 keeps them" in failed.stderr
    assert calls()[-1].startswith(f"deploy DiStack --app {tmp_path}/dev ")
    assert "--no-rollback" not in calls()[-1]
    kept = make("deploy", "ENV=dev", "NO_ROLLBACK=1", f"CDK={cdk}", f"OUT={tmp_path}")
    assert kept.returncode == 0, kept.stderr
    assert "--no-rollback" in calls()[-1].split()
