"""dictl's conventions through `dictl` itself: exit codes 0/1/2/3, --version, DISTACK_ENV, help with defaults,
--json/--quiet/selection flags, the two timeouts of health-gated verbs, preflight's real cause, tunnel's tools,
and `dictl outputs`."""

from __future__ import annotations

import argparse
import json
from importlib.metadata import version

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from ops.aws import Clients
from ops.cli import build_parser, main
from tests.ops.conftest import BUCKET

IMAGE = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04"


def _run(capsys, argv, clients_factory=None) -> tuple[int, str, str]:
    try:
        code = main(list(argv), clients_factory=clients_factory)
    except SystemExit as stop:
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version_comes_from_the_package_metadata(capsys) -> None:
    code, out, _ = _run(capsys, ["--version"])
    assert code == 0 and out.strip() == f"dictl {version('distack')}"


def test_every_flag_of_every_verb_has_help_naming_its_default() -> None:
    verbs = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    missing = []
    for verb, parser in verbs.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = f"dictl {verb} {'/'.join(action.option_strings) or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name}: no help")
            elif action.option_strings and action.nargs != 0 and not ("default" in action.help
                                                                       or "required" in action.help):
                missing.append(f"{name}: help does not say the default")
    assert not missing, "\n".join(missing)


def test_outputs_prints_the_stack_outputs_and_env_falls_back_to_distack_env(world, monkeypatch) -> None:
    code, out, err = world.dictl("outputs", "--env", "prod")
    assert code == 0, err
    rows = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert out.splitlines()[0].split() == ["OUTPUT", "VALUE"]
    assert rows["ProxyUrl"] == "http://10.42.0.10:8000" and rows["ArtifactsBucketName"] == BUCKET
    assert rows["FleetPrefillAutoScalingGroup"] == "di-prod-prefill"
    code, out, _ = world.dictl("outputs", "--env", "prod", "--json")
    payload = json.loads(out)
    assert code == 0 and payload["stack"] == "di-prod" and payload["outputs"]["ArtifactsBucketName"] == BUCKET
    code, _, err = world.dictl("outputs", "--env", "prod", "--key", "Nope")
    assert code == 2 and "ProxyUrl" in err

    monkeypatch.delenv("DISTACK_ENV", raising=False)
    code, _, err = world.dictl("outputs")
    assert code == 2 and "--env NAME" in err and "DISTACK_ENV" in err
    monkeypatch.setenv("DISTACK_ENV", "prod")
    code, out, err = world.dictl("outputs", "--key", "ArtifactsBucketName")
    assert code == 0, err
    assert out.strip() == BUCKET


def test_unknown_profile_is_a_configuration_error_with_the_fix(capsys, monkeypatch, tmp_path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile team]\nregion = us-east-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    code, _, err = _run(capsys, ["status", "--env", "prod", "--profile", "nosuch"])
    assert code == 2, err
    assert "nosuch" in err and "profiles here: team" in err and "aws configure --profile" in err
    assert "Traceback" not in err


def test_selection_flags_on_a_verb_without_selection_exit_2_with_the_fix(capsys) -> None:
    code, _, err = _run(capsys, ["scale", "--env", "prod", "--fleet", "prefill", "--count", "1", "--role", "decode"])
    assert code == 2
    assert "unrecognized arguments: --role" in err and "select instances for status" in err


def test_scale_and_tunnel_print_json(world, monkeypatch) -> None:
    from tests.ops.test_cli import _group

    _group(world, "di-prod-prefill", 1, 4)
    code, out, err = world.dictl("scale", "--env", "prod", "--fleet", "prefill", "--count", "2", "--json")
    assert code == 0, err
    assert json.loads(out) == {"fleet": "prefill", "group": "di-prod-prefill", "desired_before": 1, "desired": 2,
                               "min": 0, "max": 4, "config": {"file": "config/prod.yaml",
                                                              "key": "fleets.prefill.min_count", "value": 2}}
    control = world.launch(1, "control", "control")[0]
    code, out, _ = world.dictl("tunnel", "--env", "prod", "--json", "--print")
    payload = json.loads(out)
    assert code == 0 and payload["instance_id"] == control and payload["local_url"] == "http://localhost:8000/v1"
    assert payload["command"][:3] == ["aws", "ssm", "start-session"] and payload["runs"] is False


def test_tunnel_names_a_missing_local_tool_with_its_install_page(world, monkeypatch) -> None:
    world.launch(1, "control", "control")
    ran = []
    monkeypatch.setattr("os.execvp", lambda file, argv: ran.append(argv))
    for missing in ("aws", "session-manager-plugin"):
        monkeypatch.setattr("shutil.which", lambda name: None if name == missing else f"/usr/bin/{name}")
        code, _, err = world.dictl("tunnel", "--env", "prod", "--quiet")
        assert code == 2 and not ran
        assert f"`{missing}` not found on PATH" in err and "https://docs.aws.amazon.com/" in err
        assert "Traceback" not in err and "FileNotFoundError" not in err


def test_rollout_has_a_ready_timeout_per_instance_and_a_printed_whole_command_timeout(world) -> None:
    world.launch(2, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    code, _, err = world.dictl("rollout", "--env", "prod", "--image", IMAGE, "--ready-timeout", "600")
    assert code == 0, err
    assert {c["Parameters"]["readyTimeout"][0] for c in world.commands()} == {"600"}
    # three batches of one instance, each up to 600 s ready + 1800 s pull and stage
    assert "3 instance(s) in 3 batch(es)" in err and "stops after 7200 s" in err


def test_rollout_whole_command_timeout_stops_before_the_next_fleet(world) -> None:
    world.launch(1, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    world.ssm.command_status = "InProgress"
    world.ssm.outcome = lambda i, c: ("InProgress", "")
    code, _, err = world.dictl("rollout", "--env", "prod", "--image", IMAGE, "--timeout", "10", "--quiet")
    assert code == 1
    sent = world.commands()
    assert len(sent) == 1 and sent[0]["Parameters"]["readyTimeout"] == ["7200"]
    assert "WaitTimedOut" in err and "not updated: decode" in err


def test_restart_partially_applied_exits_3_and_prints_its_deadline(world) -> None:
    ids = sorted(world.launch(2, "decode", "decode"))
    world.ssm.outcome = lambda i, c: ("Failed", "not ready") if i == ids[1] else ("Success", "ok")
    code, _, err = world.dictl("restart", "--env", "prod", "--role", "decode", "--ready-timeout", "120",
                               "--max-errors", "1")
    assert code == 3
    assert "partially applied: 1 of 2" in err
    assert "2 instance(s) in 2 batch(es)" in err and "stops after 840 s" in err
    assert world.commands()[0]["Parameters"]["readyTimeout"] == ["120"]


class Broken:
    """Every call of every client fails the same way."""

    def __init__(self, err: Exception) -> None:
        self.err = err

    def __getattr__(self, name: str):
        def call(**_):
            raise self.err
        return call


def _broken(err: Exception):
    services = ("ec2", "ssm", "service-quotas", "secretsmanager", "cloudformation", "s3", "autoscaling")
    return lambda region, profile: Clients(None, overrides={s: Broken(err) for s in services})


@pytest.mark.parametrize("err, code, cause", [
    (NoCredentialsError(), 2, "no usable credentials"),
    (EndpointConnectionError(endpoint_url="https://ec2.us-east-2.amazonaws.com/"), 1, "cannot reach AWS"),
    (ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "not allowed"}}, "DescribeImages"), 1,
     "access denied, so"),
])
def test_preflight_that_could_not_check_fails_naming_the_cause_once(capsys, err, code, cause) -> None:
    status, out, stderr = _run(capsys, ["preflight", "--env", "prod"], _broken(err))
    assert status == code, stderr
    assert out.count(cause) == 1 and "could not check" not in out
    assert out.count("ERROR") == 1 and "fix:" in out
