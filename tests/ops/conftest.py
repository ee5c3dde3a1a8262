"""Fixtures for `dictl` tests: moto for EC2/CloudFormation/S3/SSM/Auto Scaling, and a fake for the one SSM
call moto lacks (ListCommandInvocations), which answers from the instances moto resolved for each command."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import boto3
import pytest
from moto import mock_aws

from ops.aws import Clients
from ops.cli import main
from model import naming
from tests.tools import share_botocore_models

REGION = "us-east-2"
BUCKET = "di-prod-artifacts"
# The worker and control roles' IDs as the stack output NodeRoleIds names them (ROLE-ID of ROLE-ID:INSTANCE-ID).
NODE_ROLE_IDS = ("AROAEXAMPLEWORKER0001", "AROAEXAMPLECONTROL001")
# moto's EC2 starts with its whole public AMI catalogue; serializing it for one DescribeImages took 10+ s per
# test. The tests launch from one image, so moto gets a one-image catalogue (MOTO_AMIS_PATH, see
# https://docs.getmoto.org/en/latest/docs/services/ec2.html).
AMIS = Path(__file__).parent / "fakes" / "amis.json"
Outcome = Callable[[str, dict[str, Any]], tuple[str, str]]


def succeed(instance_id: str, command: dict[str, Any]) -> tuple[str, str]:
    """Default outcome: every instance succeeds with a one-line output."""
    return "Success", f"ok on {instance_id}"


class FakeSsm:
    """The moto SSM client, plus ListCommandInvocations built from the targets moto resolved.

    Counts every call by operation so tests can assert how the product talks to SSM.
    """

    def __init__(self, real: Any, outcome: Outcome = succeed, command_status: str | None = None) -> None:
        self.real = real
        self.outcome = outcome
        self.command_status = command_status
        self.calls: dict[str, int] = {}
        self.cancelled: list[str] = []
        self.requested_ids: dict[str, list[str]] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.real, name)
        if callable(attribute):
            def counted(*args: Any, **kwargs: Any) -> Any:
                self._count(name)
                return attribute(*args, **kwargs)
            return counted
        return attribute

    def send_command(self, **kwargs: Any) -> dict[str, Any]:
        self._count("send_command")
        response = self.real.send_command(**kwargs)
        # moto adds every instance to a command sent without Targets; remember what was really asked for.
        if "InstanceIds" in kwargs:
            self.requested_ids[response["Command"]["CommandId"]] = list(kwargs["InstanceIds"])
        return response

    def get_command_invocation(self, *, CommandId: str, InstanceId: str, PluginName: str) -> dict[str, Any]:
        """Only for a step whose inline output was cut: the whole output (up to SSM's 24,000 characters)."""
        self._count("get_command_invocation")
        command = self.real.list_commands(CommandId=CommandId)["Commands"][0]
        status, output = self.outcome(InstanceId, command)
        assert len(output) >= 2500, "dictl must read results with ListCommandInvocations, not per instance"
        return {"CommandId": CommandId, "InstanceId": InstanceId, "PluginName": PluginName, "Status": status,
                "StandardOutputContent": output[:24000], "StandardErrorContent": ""}

    def list_commands(self, **kwargs: Any) -> dict[str, Any]:
        self._count("list_commands")
        response = self.real.list_commands(**kwargs)
        if self.command_status:
            for command in response["Commands"]:
                command["Status"] = self.command_status
        return response

    def cancel_command(self, **kwargs: Any) -> dict[str, Any]:
        self._count("cancel_command")
        self.cancelled.append(kwargs["CommandId"])
        return {}

    def list_command_invocations(self, *, CommandId: str, Details: bool = False, MaxResults: int = 50,
                                 NextToken: str | None = None, **_: Any) -> dict[str, Any]:
        self._count("list_command_invocations")
        assert MaxResults <= 50, "the API allows at most 50 per page"
        command = self.real.list_commands(CommandId=CommandId)["Commands"][0]
        ids = sorted(self.requested_ids.get(CommandId, command["InstanceIds"]))
        start = int(NextToken or 0)
        page = ids[start:start + MaxResults]
        invocations = []
        for instance_id in page:
            status, output = self.outcome(instance_id, command)
            # ListCommandInvocations cuts each step's output at 2,500 characters.
            plugin = {"Name": "step", "Status": status, "Output": output[:2500]}
            invocations.append({"CommandId": CommandId, "InstanceId": instance_id, "Status": status,
                                "DocumentName": command["DocumentName"],
                                "CommandPlugins": [plugin] if Details else []})
        response: dict[str, Any] = {"CommandInvocations": invocations}
        if start + MaxResults < len(ids):
            response["NextToken"] = str(start + MaxResults)
        return response


@dataclass
class World:
    """One mocked account: clients, the fake SSM, and helpers to add instances and run dictl."""

    session: Any
    ssm: FakeSsm
    env: str = "prod"
    groups: dict[str, str] = field(default_factory=dict)
    # Clients made for one dictl run serve the next ones too: building a botocore client (EC2's above all) costs
    # more than the moto calls a run makes, and every run talks to the same mocked account.
    made: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self.made:
            self.made[service] = self.session.client(service)
        return self.made[service]

    def clients(self, region: str = REGION, profile: str | None = None) -> Clients:
        clients = Clients(self.session)
        self.made["ssm"] = self.ssm
        clients._clients = self.made  # shared, so the clients this run makes are there for the next
        return clients

    def launch(self, count: int, role: str, fleet: str, env: str | None = None) -> list[str]:
        """Tagged instances as the stack would create them."""
        ec2 = self.client("ec2")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        tags = [{"Key": naming.TAG_DEPLOYMENT, "Value": env or self.env}, {"Key": naming.TAG_ROLE, "Value": role},
                {"Key": naming.TAG_FLEET, "Value": fleet}]
        response = ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count, InstanceType="m5.large",
                                     TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
        return [i["InstanceId"] for i in response["Instances"]]

    def dictl(self, *argv: str) -> tuple[int, str, str]:
        """Run the CLI in-process; return (exit status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(argv), clients_factory=self.clients)
            except SystemExit as stop:  # argparse ends bad command lines itself, with status 2
                code = int(stop.code or 0)
        return code, out.getvalue(), err.getvalue()

    def commands(self) -> list[dict[str, Any]]:
        """Every SendCommand moto recorded, oldest first, with the InstanceIds really requested."""
        found = self.ssm.real.list_commands()["Commands"]
        for command in found:
            command["InstanceIds"] = self.ssm.requested_ids.get(command["CommandId"], [])
        return found


def make_stack(session: Any, env: str, *, groups: dict[str, str] | None = None, bucket: str = BUCKET) -> None:
    """A stack named like DiStack's with the outputs dictl reads."""
    outputs = {naming.OUTPUT_BUCKET: bucket, naming.OUTPUT_PROXY_URL: "http://10.42.0.10:8000",
               naming.OUTPUT_CONTROL_INSTANCE_GROUP: f"di-{env}-control",
               naming.OUTPUT_NODE_ROLE_IDS: ",".join(NODE_ROLE_IDS)}
    for fleet, group in (groups or {}).items():
        outputs[naming.fleet_output(fleet)] = group
    template = {"Resources": {"Marker": {"Type": "AWS::SNS::Topic"}},
                "Outputs": {key: {"Value": value} for key, value in outputs.items()}}
    session.client("cloudformation").create_stack(StackName=naming.stack_name(env), TemplateBody=json.dumps(template))
    session.client("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})


class FakeTime:
    """A clock that moves only when slept on: dictl's polls (ops.commands.wait, ops.verbs.wait_ready) and the
    rollout's whole-command deadline (ops.verbs.rollout) take their clock and sleep as keyword defaults, so every dictl run in these tests polls without real waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    from ops import commands, verbs

    fake = FakeTime()
    for function in (commands.wait, verbs.wait_ready):
        assert {"clock", "sleep"} <= set(function.__kwdefaults__), f"{function.__qualname__} lost its clock/sleep"
        monkeypatch.setitem(function.__kwdefaults__, "clock", fake.clock)
        monkeypatch.setitem(function.__kwdefaults__, "sleep", fake.sleep)
    assert "clock" in verbs.rollout.__kwdefaults__, "verbs.rollout lost its clock"
    monkeypatch.setitem(verbs.rollout.__kwdefaults__, "clock", fake.clock)
    return fake


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials that can only ever reach moto."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    one_image(monkeypatch)
    share_botocore_models(monkeypatch)


def one_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's EC2 backend with only the image in fakes/amis.json (read when the backend is created)."""
    from moto.ec2.models import amis

    monkeypatch.setenv("MOTO_AMIS_PATH", str(AMIS))  # also skips the per-region "latest" AMI files
    monkeypatch.setattr(amis, "AMIS", json.loads(AMIS.read_text()))


@pytest.fixture
def world(aws_env: None) -> Any:
    """A deployment `prod` with its stack outputs and bucket, no instances yet."""
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        groups = {"prefill": "di-prod-prefill", "decode": "di-prod-decode"}
        make_stack(session, "prod", groups=groups)
        yield World(session=session, ssm=FakeSsm(session.client("ssm")), groups=groups)
