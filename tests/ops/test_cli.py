"""`dictl` end to end against moto: targets, batching knobs, exit statuses and what each verb sends."""

from __future__ import annotations

import json

import pytest

from ops.cli import build_parser, main
from model import naming
from tests.ops.conftest import BUCKET, NODE_ROLE_IDS, succeed


def _sent(world, index: int = -1) -> dict:
    return world.commands()[index]


def test_help_needs_no_credentials(capsys, monkeypatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    assert "rollout" in capsys.readouterr().out


@pytest.mark.parametrize("verb", sorted(build_parser()._subparsers._group_actions[0].choices))
def test_every_command_has_help(verb, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main([verb, "--help"])
    assert stop.value.code == 0
    assert "usage: dictl " + verb in capsys.readouterr().out


def test_dictl_never_loads_aws_cdk() -> None:
    import subprocess
    import sys

    code = ("import sys, ops.cli, ops.verbs, ops.commands, ops.targets, ops.preflight, ops.bench, ops.fleets, "
            "ops.tunnel; sys.exit('aws_cdk' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=str(__import__("pathlib").Path(__file__).parents[2]),
                          timeout=60).returncode == 0


def test_status_prints_a_table_and_succeeds(world) -> None:
    ids = world.launch(2, "prefill", "prefill") + world.launch(1, "decode", "decode")
    # The shape userdata/di-status prints.
    status = {"role": "prefill", "image": "repo/x:tag-1",
              "units": [{"name": "di-vllm@0.service", "state": "active"},
                        {"name": "di-vllm@1.service", "state": "activating"}],
              "endpoints": [{"index": 0, "health": "200", "registered": True},
                            {"index": 1, "health": "503", "registered": False}]}
    world.ssm.outcome = lambda i, c: ("Success", json.dumps(status))
    code, out, err = world.dictl("status", "--env", "prod", "--quiet")
    assert code == 0, err
    assert all(i in out for i in ids)
    assert "health 1/2, etcd 1/2, units 1/2 active, image tag-1" in out
    sent = _sent(world)
    assert sent["Targets"] == [{"Key": "tag:di:deployment", "Values": ["prod"]}]
    assert sent["MaxErrors"] == "100%" and not sent.get("OutputS3BucketName")


def test_status_json_and_partial_failure_exit_1_naming_instances(world) -> None:
    ids = sorted(world.launch(3, "decode", "decode"))
    world.ssm.outcome = lambda i, c: ("Failed", "unit down") if i == ids[0] else ("Success", '{"role": "decode"}')
    code, out, err = world.dictl("status", "--env", "prod", "--role", "decode", "--json", "--quiet")
    assert code == 1
    payload = json.loads(out)
    assert payload["ok"] is False
    assert {i["instance_id"]: i["status"] for i in payload["instances"]}[ids[0]] == "Failed"
    assert payload["instances"][1]["output"] == {"role": "decode"}
    assert ids[0] in err and "1 of 3 failed" in err


def test_status_over_fifty_instances_pages_results(world) -> None:
    world.launch(51, "prefill", "prefill")  # one more than a page
    code, out, _ = world.dictl("status", "--env", "prod", "--quiet")
    assert code == 0
    assert out.count("Success") == 51
    assert world.ssm.calls["list_command_invocations"] == 2 and world.ssm.calls["send_command"] == 1


def test_no_matching_instance_is_a_failure(world) -> None:
    code, _, err = world.dictl("status", "--env", "prod", "--quiet")
    assert code == 1 and "no instance matched" in err


@pytest.mark.parametrize("argv, message", [
    (["status"], "--env"),
    (["status", "--env", "nosuch"], "no such environment"),
    (["status", "--env", "prod", "--fleet", "nosuch"], "no such fleet"),
    (["status", "--env", "prod", "--instance-id", "bogus"], "not an EC2 instance id"),
    (["restart", "--env", "prod", "--batch-size", "0"], "MaxConcurrency"),
    (["restart", "--env", "prod", "--endpoint", "x;rm"], "endpoint"),
    (["rollout", "--env", "prod"], "needs --image and/or --model"),
    (["rollout", "--env", "prod", "--image", "not an image"], "image reference"),
    (["rollout", "--env", "prod", "--model", "m/x", "--fleet", "nosuch"], "no such fleet"),
    (["scale", "--env", "prod", "--fleet", "prefill", "--count", "-1"], "0 or more"),
    (["scale", "--env", "prod", "--fleet", "control", "--count", "2"], "no such worker fleet"),
    (["compile", "--env", "prod", "--fleet", "control"], "no such fleet"),
    (["compare", "/nonexistent/a.json", "/nonexistent/b.json"], "cannot read"),
])
def test_bad_arguments_exit_2_with_a_clear_message(world, argv, message) -> None:
    code, _, err = world.dictl(*argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_missing_stack_exits_2(world) -> None:
    code, _, err = world.dictl("status", "--env", "dev", "--quiet")
    assert code == 2 and "make deploy ENV=dev" in err


def test_restart_is_rolling_and_health_gated(world) -> None:
    world.launch(3, "prefill", "prefill")
    code, _, err = world.dictl("restart", "--env", "prod", "--fleet", "prefill", "--clear-kv-lock",
                               "--endpoint", "0", "--quiet")
    assert code == 0, err
    sent = _sent(world)
    assert sent["DocumentName"] == "di-prod-Restart"
    assert sent["MaxConcurrency"] == "1" and sent["MaxErrors"] == "0"
    assert {"Key": "tag:di:fleet", "Values": ["prefill"]} in sent["Targets"]
    assert sent["Parameters"]["flags"] == ["--clear-kv-lock"] and sent["Parameters"]["endpoint"] == ["0"]


def test_rollout_goes_fleet_by_fleet_and_stops_at_a_failing_fleet(world) -> None:
    prefill = world.launch(2, "prefill", "prefill")
    world.launch(2, "decode", "decode")
    world.ssm.outcome = lambda i, c: ("Failed", "not ready; rolled back") if i == prefill[0] else ("Success", "ok")
    code, _, err = world.dictl("rollout", "--env", "prod", "--image", "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04",
                               "--batch-size", "50%", "--quiet")
    assert code == 3, "one prefill instance was updated, the other was not: partially applied"
    assert "partially applied: 1 of 2" in err
    sent = world.commands()
    assert len(sent) == 1, "decode must not be touched after prefill failed"
    assert sent[0]["DocumentName"] == "di-prod-Update" and sent[0]["MaxConcurrency"] == "50%"
    assert sent[0]["Parameters"]["image"] == ["public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04"]
    assert "not updated: decode" in err and prefill[0] in err


def test_rollout_success_updates_every_fleet_in_order_and_prints_the_config_change(world) -> None:
    world.launch(1, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    code, _, err = world.dictl("rollout", "--env", "prod", "--model", "meta-llama/Llama-3.1-70B-Instruct", "--quiet")
    assert code == 0, err
    fleets = [next(t["Values"][0] for t in c["Targets"] if t["Key"] == "tag:di:fleet") for c in world.commands()]
    assert fleets == ["prefill", "decode"]
    assert "model.id: meta-llama/Llama-3.1-70B-Instruct" in err


def test_rollout_skips_a_fleet_scaled_to_zero(world) -> None:
    world.launch(1, "decode", "decode")
    code, _, err = world.dictl("rollout", "--env", "prod", "--image", "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04", "--quiet")
    assert code == 0, err
    assert "fleet prefill has no instances; skipped" in err
    assert [c["DocumentName"] for c in world.commands()] == ["di-prod-Update"]


def _group(world, name: str, desired: int, maximum: int, role: str = "", fleet: str = "", minimum: int = 0) -> None:
    ec2, autoscaling = world.client("ec2"), world.client("autoscaling")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image,
                                                                            "InstanceType": "m5.large"})
    autoscaling.create_auto_scaling_group(AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": name},
                                          MinSize=minimum, MaxSize=maximum, DesiredCapacity=desired,
                                          AvailabilityZones=["us-east-2a"], Tags=[
                                              {"Key": key, "Value": value, "PropagateAtLaunch": True}
                                              for key, value in ((naming.TAG_DEPLOYMENT, "prod"),
                                                                 (naming.TAG_ROLE, role or "prefill"),
                                                                 (naming.TAG_FLEET, fleet or "prefill"))])


def test_scale_sets_desired_capacity_and_prints_the_config_line(world) -> None:
    _group(world, "di-prod-prefill", 1, 4, minimum=1)
    code, out, err = world.dictl("scale", "--env", "prod", "--fleet", "prefill", "--count", "3")
    assert code == 0, err
    group = world.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=["di-prod-prefill"])["AutoScalingGroups"][0]
    assert group["DesiredCapacity"] == 3
    # prod's prefill scales itself: a deploy leaves the size alone, min_count is what holds capacity.
    assert "target tracking, PrefillRequestsPerEndpoint at 4" in out and "deploy leaves its size alone" in out
    assert "fleets.prefill.min_count: 3" in out and "config/prod.yaml" in out
    code, _, err = world.dictl("scale", "--env", "prod", "--fleet", "prefill", "--count", "0")
    assert code == 2 and "may run 1 to 4" in err and "lower fleets.prefill.min_count" in err


def test_scale_beyond_the_group_bounds_exits_2(world) -> None:
    _group(world, "di-prod-decode", 1, 4)
    code, _, err = world.dictl("scale", "--env", "prod", "--fleet", "decode", "--count", "9")
    assert code == 2 and "0 to 4" in err and "max_count" in err
    assert world.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=["di-prod-decode"])["AutoScalingGroups"][0]["DesiredCapacity"] == 1


class WarmPools:
    """moto keeps no instances in a warm pool: DescribeWarmPool answers with `warm` instances per group."""

    def __init__(self, real, warm: dict[str, int]) -> None:
        self.real, self.warm = real, warm

    def describe_warm_pool(self, AutoScalingGroupName: str, **_) -> dict:
        return {"Instances": [{"InstanceId": f"i-{n:017x}", "LifecycleState": "Warmed:Stopped"}
                              for n in range(self.warm.get(AutoScalingGroupName, 0))]}

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_status_shows_each_fleet_desired_in_service_warm_and_the_dashboard(world) -> None:
    from ops.fleets import render_groups

    _group(world, "di-prod-prefill", 2, 4, minimum=1)
    world.made["autoscaling"] = WarmPools(world.client("autoscaling"), {"di-prod-prefill": 1})
    dashboard = "https://us-east-2.console.aws.amazon.com/cloudwatch/home?region=us-east-2#dashboards:name=distack-prod"
    world.client("cloudformation").update_stack(StackName="di-prod", TemplateBody=json.dumps({
        "Resources": {"Marker": {"Type": "AWS::SNS::Topic"}}, "Outputs": {key: {"Value": value} for key, value in {
            naming.OUTPUT_BUCKET: BUCKET, naming.OUTPUT_DASHBOARD_URL: dashboard,
            naming.fleet_output("prefill"): "di-prod-prefill", naming.fleet_output("decode"): "di-prod-decode",
        }.items()}}))
    code, out, err = world.dictl("status", "--env", "prod", "--quiet", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert len(payload["instances"]) == 2  # di-status still runs on every instance (the group's two)
    assert payload["dashboard"] == dashboard
    prefill, decode = payload["fleets"]
    assert (prefill["fleet"], prefill["min"], prefill["desired"], prefill["in_service"], prefill["warm"]) == (
        "prefill", 1, 2, 2, 1)
    assert prefill["scales_on"] == "target tracking, PrefillRequestsPerEndpoint at 4"
    assert decode == {"fleet": "decode", "group": "di-prod-decode", "missing": True,
                      "scales_on": "target tracking, DecodeStreamsPerEndpoint at 6"}
    rows = [line.split() for line in render_groups(payload["fleets"]).splitlines()]
    assert rows[1][:5] == ["prefill", "1-4", "2", "2", "1"] and rows[2][-3:] == ["di-prod-decode", "not", "found"]


def test_wait_ready_waits_for_groups_then_runs_ready_everywhere(world) -> None:
    for fleet in ("prefill", "decode", "control"):
        _group(world, f"di-prod-{fleet}", 1, 1, role=fleet, fleet=fleet)
    code, _, err = world.dictl("wait-ready", "--env", "prod", "--timeout", "600", "--quiet")
    assert code == 0, err
    sent = _sent(world)
    assert sent["DocumentName"] == "di-prod-Ready"
    assert 0 < int(sent["Parameters"]["timeout"][0]) <= 600


def test_wait_ready_times_out_when_a_group_is_short(world) -> None:
    _group(world, "di-prod-prefill", 0, 2)
    world.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName="di-prod-prefill", DesiredCapacity=0)
    for name in ("di-prod-decode", "di-prod-control"):
        _group(world, name, 1, 1)
    world.client("autoscaling").set_desired_capacity(AutoScalingGroupName="di-prod-decode", DesiredCapacity=1)
    # A group whose instances never become healthy keeps dictl waiting until the timeout.
    world.client("autoscaling").set_instance_health(
        InstanceId=world.client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=["di-prod-decode"])["AutoScalingGroups"][0]["Instances"][0]["InstanceId"],
        HealthStatus="Unhealthy")
    code, _, err = world.dictl("wait-ready", "--env", "prod", "--timeout", "0", "--quiet")
    assert code == 1 and "decode 0/1" in err
    assert world.commands() == []


def test_logs_compile_smoke_bench_drain_send_their_documents(world) -> None:
    (control,) = world.launch(1, "control", "control")
    prefill = world.launch(2, "prefill", "prefill")
    world.launch(1, "decode", "decode")
    assert world.dictl("logs", "--env", "prod", "--hours", "2", "--quiet")[0] == 0
    assert _sent(world)["DocumentName"] == "di-prod-Collect-logs"
    assert _sent(world)["Parameters"]["hours"] == ["2"]

    assert world.dictl("compile", "--env", "prod", "--force", "--quiet")[0] == 0
    compile_cmd = _sent(world)
    assert compile_cmd["DocumentName"] == "di-prod-Compile"
    # prefill and decode share their shapes (TP 16, config/prod.yaml): one compile, on one prefill instance
    assert len([c for c in world.commands() if c["DocumentName"] == "di-prod-Compile"]) == 1
    assert compile_cmd["InstanceIds"][0] in prefill

    assert world.dictl("smoke", "--env", "prod", "--quiet")[0] == 0
    assert {"Key": "tag:di:role", "Values": ["control"]} in _sent(world)["Targets"]

    # bench.sh prints where it uploaded: its own folder, ROLE-ID:INSTANCE-ID, under bench/.
    world.ssm.outcome = lambda i, c: ("Success", f"s3://{BUCKET}/bench/{NODE_ROLE_IDS[1]}:{i}/di-1/")
    code, _, err = world.dictl("bench", "--env", "prod", "--run-id", "di-1", "--quiet")
    assert code == 0, err
    # config/prod.yaml: max_num_seqs 8 x four TP-16 decode endpoints on its one decode instance
    assert _sent(world)["Parameters"]["concurrency"] == ["32"]
    assert f"results of {control}: s3://{BUCKET}/bench/{NODE_ROLE_IDS[1]}:{control}/di-1/" in err
    world.ssm.outcome = succeed

    assert world.dictl("drain", "--env", "prod", "--instance-id", prefill[0], "--quiet")[0] == 0
    assert _sent(world)["InstanceIds"] == [prefill[0]]
    # The same wait a scale-in allows (config/prod.yaml drain.timeout_seconds), unless --timeout says otherwise.
    assert _sent(world)["Parameters"]["timeout"] == ["600"]


def test_tunnel_prints_the_port_forwarding_command(world) -> None:
    control = world.launch(1, "control", "control")[0]
    code, out, _ = world.dictl("tunnel", "--env", "prod", "--local-port", "18000", "--print")
    assert code == 0
    assert out.split() == ["aws", "ssm", "start-session", "--target", control, "--document-name",
                           "AWS-StartPortForwardingSession", "--parameters",
                           """'{"portNumber":["8000"],"localPortNumber":["18000"]}'""", "--region", "us-east-2"]


def test_tunnel_executes_aws_cli(world, monkeypatch) -> None:
    world.launch(1, "control", "control")
    ran = []
    monkeypatch.setattr("os.execvp", lambda file, argv: ran.append(argv))
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    assert world.dictl("tunnel", "--env", "prod")[0] == 0
    assert ran[0][:3] == ["aws", "ssm", "start-session"]


def test_every_verb_has_its_document() -> None:
    from pathlib import Path

    documents = {p.stem for p in (Path(__file__).parents[2] / "stacks" / "documents").glob("*.yaml")}
    used = {"status", "ready", "restart", "update", "collect-logs", "compile", "smoke", "bench", "drain"}
    assert used <= documents
    assert {naming.ssm_document("prod", v) for v in used} >= {"di-prod-Collect-logs", "di-prod-Ready"}
    assert build_parser().prog == "dictl"


def test_an_aws_error_is_one_line_and_exit_1(world, monkeypatch) -> None:
    from botocore.exceptions import ClientError

    world.launch(1, "prefill", "prefill")

    def denied(**_):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, "SendCommand")

    monkeypatch.setattr(world.ssm, "send_command", denied)
    code, _, err = world.dictl("status", "--env", "prod", "--quiet")
    assert code == 1
    assert "AWS error" in err and "AccessDeniedException" in err and "Traceback" not in err


def test_rollout_takes_an_image_pinned_to_its_digest_and_refuses_a_short_one() -> None:
    from ops.cli import build_parser

    digest = "@sha256:" + "0a" * 32
    image = "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.24.0.1.1.0-neuronx-py313-sdk2.32.0-ubuntu24.04"
    args = build_parser().parse_args(["rollout", "--env", "prod", "--image", image + digest])
    assert args.image == image + digest
    with pytest.raises(SystemExit):
        build_parser().parse_args(["rollout", "--env", "prod", "--image", image + "@sha256:abc"])


def test_logs_names_each_instances_upload_and_refuses_one_in_another_folder(world) -> None:
    honest, liar, foreign = sorted(world.launch(3, "prefill", "prefill"))
    worker = NODE_ROLE_IDS[0]
    claims = {honest: f"s3://{BUCKET}/logs/{worker}:{honest}/20260101T000000Z/",
              liar: f"s3://{BUCKET}/logs/{worker}:{honest}/20260101T000001Z/",  # claims the honest node's folder
              foreign: f"s3://{BUCKET}/logs/AROAEXAMPLEFOREIGN001:{foreign}/20260101T000000Z/"}
    world.ssm.outcome = lambda i, c: ("Success", f"collected\n{claims[i]}")
    code, _, err = world.dictl("logs", "--env", "prod", "--quiet")
    assert code == 1
    assert f"logs of {honest}: {claims[honest]}" in err
    assert f"dictl: {liar} reported {claims[liar]}, not {liar}'s own folder logs/ROLE-ID:{liar}/" in err
    assert "role AROAEXAMPLEFOREIGN001 is not one of the stack's node roles" in err
    assert f"logs of {liar}" not in err and f"logs of {foreign}" not in err
