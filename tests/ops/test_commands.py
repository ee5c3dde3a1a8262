"""Send/wait/collect: one SendCommand per target set, results in pages of ListCommandInvocations."""

from __future__ import annotations

import io

import boto3
import pytest
from botocore.stub import Stubber

from ops import commands
from ops.aws import Clients
from ops.commands import SendOptions
from ops.output import Progress
from ops.targets import Deployment, Instance, Selection
from model.loader import load_environment
from tests.ops.conftest import BUCKET, REGION

CID = "0b6c0c6e-3c5e-4a4b-9f3e-1c2d3e4f5a6b"


def test_collect_pages_through_list_command_invocations_with_details(aws_env) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    first = [{"CommandId": CID, "InstanceId": f"i-{n:017x}", "Status": "Success"} for n in range(50)]
    second = [{"CommandId": CID, "InstanceId": "i-00000000000000ff1", "Status": "Failed"}]
    with Stubber(ssm) as stub:
        stub.add_response("list_command_invocations", {"CommandInvocations": first, "NextToken": "page-2"},
                          {"CommandId": CID, "Details": True, "MaxResults": 50})
        stub.add_response("list_command_invocations", {"CommandInvocations": second},
                          {"CommandId": CID, "Details": True, "MaxResults": 50, "NextToken": "page-2"})
        invocations = commands.collect(Clients(None, overrides={"ssm": ssm}), CID)
        stub.assert_no_pending_responses()
    assert len(invocations) == 51
    assert invocations[-1]["Status"] == "Failed"


def test_truncated_output_is_read_whole_from_the_bucket(world) -> None:
    s3 = world.client("s3")
    key = "commands/c-1/i-0123456789abcdef0/awsrunShellScript/status/stdout"
    whole = "x" * 30_000
    s3.put_object(Bucket=BUCKET, Key=key, Body=whole.encode())
    invocation = {"CommandPlugins": [{"Output": whole[:2500],
                                      "StandardOutputUrl": f"https://s3.{REGION}.amazonaws.com/{BUCKET}/{key}"}]}
    assert commands.plugin_output(world.clients(), invocation) == whole
    short = {"CommandPlugins": [{"Output": "fine", "StandardOutputUrl": "https://s3.amazonaws.com/nope/k"}]}
    assert commands.plugin_output(world.clients(), short) == "fine"


def _deployment(world) -> Deployment:
    return Deployment(load_environment("prod"), world.clients())


def test_101_instances_take_one_send_and_three_result_pages(world) -> None:
    world.launch(101, "prefill", "prefill")  # 50 + 50 + 1: the smallest count that needs a third page
    run = commands.run(_deployment(world), "status", Selection(), options=SendOptions(poll_seconds=0),
                       progress=Progress(quiet=True))
    assert run.ok and len(run.results) == 101
    assert world.ssm.calls["send_command"] == 1
    assert world.ssm.calls["list_command_invocations"] == 3
    sent = world.commands()[0]
    assert sent["OutputS3BucketName"] == BUCKET and sent["OutputS3KeyPrefix"] == "commands"
    assert sent["DocumentName"] == "di-prod-Status"


def test_partial_failure_and_undelivered_instances_are_failures(world) -> None:
    ids = world.launch(4, "decode", "decode")
    bad = sorted(ids)[1]
    world.ssm.outcome = lambda i, c: ("Failed", "boom") if i == bad else ("Success", "ok")
    d = _deployment(world)
    expected = d.instances(Selection(role="decode"))
    ghost = Instance("i-0ffffffffffffffff", "decode", "decode", "running")
    run = commands.run(d, "status", Selection(role="decode"), options=SendOptions(poll_seconds=0),
                       progress=Progress(quiet=True), expected=expected + [ghost])
    failed = {r.instance_id: r.status for r in run.failed}
    assert failed == {bad: "Failed", "i-0ffffffffffffffff": commands.NOT_DELIVERED}


def test_a_wait_that_times_out_cancels_and_marks_unfinished_instances(world) -> None:
    world.launch(2, "prefill", "prefill")
    world.ssm.command_status = "InProgress"
    world.ssm.outcome = lambda i, c: ("InProgress", "")
    stream = io.StringIO()
    run = commands.run(_deployment(world), "status", Selection(),
                       options=SendOptions(timeout=0, poll_seconds=0), progress=Progress(stream=stream))
    assert {r.status for r in run.results} == {commands.WAIT_TIMED_OUT}
    assert world.ssm.cancelled == run.command_ids
    assert "InProgress" in stream.getvalue()


def test_wait_polls_until_done_and_reports_progress_on_stderr(world) -> None:
    states = iter(["Pending", "InProgress", "Success"])

    class Ssm:
        def list_commands(self, **_):
            return {"Commands": [{"Status": next(states), "CompletedCount": 1, "TargetCount": 2,
                                  "DocumentName": "di-prod-Status"}]}

    stream, slept = io.StringIO(), []
    finished = commands.wait(Clients(None, overrides={"ssm": Ssm()}), CID,
                             options=SendOptions(timeout=60, poll_seconds=2), progress=Progress(stream=stream),
                             sleep=slept.append)
    assert finished and slept == [2, 2]
    assert stream.getvalue().count("\n") == 3


@pytest.mark.parametrize("url, location", [
    ("https://s3.us-east-2.amazonaws.com/b/k/stdout", ("b", "k/stdout")),
    ("https://b.s3.us-east-2.amazonaws.com/k/stdout", ("b", "k/stdout")),
    ("s3://b/k", ("b", "k")),
    ("", None),
])
def test_s3_output_urls(url, location) -> None:
    assert commands._s3_location(url) == location
