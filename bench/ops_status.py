"""Benchmark: `dictl status` against mocked deployments of 50 and 200 instances (moto); prints the AWS API
calls by operation (counted with botocore event hooks) and the wall time. Calls should grow with the number
of 50-instance result pages, not with the number of instances."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REGION = "us-east-2"
ENV = "prod"


class ListInvocations:
    """moto lacks ListCommandInvocations: answer it from the instances moto resolved, 50 per page, and count
    each page as the API call it would be."""

    def __init__(self, ssm: Any, lookup: Any, calls: Counter[str]) -> None:
        # `lookup` reads moto's state through an unhooked client, so only dictl's own calls are counted.
        self.ssm, self.lookup, self.calls = ssm, lookup, calls

    def list_command_invocations(self, *, CommandId: str, MaxResults: int = 50, NextToken: str | None = None,
                                 **_: Any) -> dict[str, Any]:
        self.calls["ssm.ListCommandInvocations"] += 1
        ids = sorted(self.lookup.list_commands(CommandId=CommandId)["Commands"][0]["InstanceIds"])
        start = int(NextToken or 0)
        status = json.dumps({"role": "prefill", "image": "repo/image:1", "health": {"8000": 200}})
        page = [{"InstanceId": i, "Status": "Success", "CommandPlugins": [{"Output": status}]}
                for i in ids[start:start + MaxResults]]
        more = {"NextToken": str(start + MaxResults)} if start + MaxResults < len(ids) else {}
        return {"CommandInvocations": page, **more}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ssm, name)


def measure(instances: int) -> tuple[Counter[str], float, int]:
    """Run `dictl status --env prod` once against `instances` mocked instances."""
    import boto3
    from moto import mock_aws

    from ops.aws import Clients
    from ops.cli import main
    from model import naming

    with mock_aws():
        session = boto3.Session(region_name=REGION)
        template = {"Resources": {"Marker": {"Type": "AWS::SNS::Topic"}},
                    "Outputs": {naming.OUTPUT_BUCKET: {"Value": "di-prod-artifacts"}}}
        session.client("cloudformation").create_stack(StackName=naming.stack_name(ENV),
                                                       TemplateBody=json.dumps(template))
        ec2 = session.client("ec2")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        tags = [{"Key": naming.TAG_DEPLOYMENT, "Value": ENV}, {"Key": naming.TAG_ROLE, "Value": "prefill"},
                {"Key": naming.TAG_FLEET, "Value": "prefill"}]
        ec2.run_instances(ImageId=image, MinCount=instances, MaxCount=instances, InstanceType="m5.large",
                          TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])

        calls: Counter[str] = Counter()
        session.events.register("before-call.*.*", lambda model, **_: calls.update(
            [f"{model.service_model.endpoint_prefix}.{model.name}"]))
        ssm = ListInvocations(session.client("ssm"), boto3.Session(region_name=REGION).client("ssm"), calls)
        out, err = io.StringIO(), io.StringIO()
        started = time.perf_counter()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["status", "--env", ENV, "--quiet"],
                        clients_factory=lambda region, profile: Clients(session, overrides={"ssm": ssm}))
        return calls, time.perf_counter() - started, code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, nargs="+", default=[50, 200])
    args = parser.parse_args(argv)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION}.items():
        os.environ.setdefault(key, value)
    failures = 0
    for count in args.instances:
        calls, seconds, code = measure(count)
        failures += code != 0
        detail = ", ".join(f"{name} {n}" for name, n in sorted(calls.items()))
        print(f"status on {count:>4} instances: {sum(calls.values()):>3} API calls in {seconds:6.2f} s "
              f"(exit {code}): {detail}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
