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


def test_cut_output_is_read_again_from_ssm_and_nothing_from_the_bucket(world) -> None:
    # A step cut at ListCommandInvocations' 2,500 characters is read with GetCommandInvocation (24,000); the
    # bucket is not asked, so no node-writable key can stand in for another node's output.
    ids = world.launch(2, "prefill", "prefill")
    long_one = sorted(ids)[0]
    whole = "x" * 30_000
    world.ssm.outcome = lambda i, c: ("Success", whole if i == long_one else "fine")
    run = commands.run(_deployment(world), "status", Selection(), options=SendOptions(poll_seconds=0),
                       progress=Progress(quiet=True))
    outputs = {r.instance_id: r.output for r in run.results}
    assert outputs[long_one].startswith("x" * 24_000) and "cut by SSM at 24000 characters" in outputs[long_one]
    assert outputs[sorted(ids)[1]] == "fine"
    assert world.ssm.calls["get_command_invocation"] == 1  # only for the cut one


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
    # No S3 output location: the SSM Agent would write it with the node's role, outside any per-instance scope.
    assert not sent.get("OutputS3BucketName") and not sent.get("OutputS3KeyPrefix")
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
