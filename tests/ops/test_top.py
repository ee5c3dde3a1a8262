"""`dictl top` against botocore clients whose requests are validated against the service models (Stubber for EC2;
GetMetricData answered from the metric and dimensions each query names): rows per endpoint of the running workers,
the latest values, 500 queries per call with NextToken followed, the proxy's figures absent with proxy: neuron."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import ANY, Stubber

from ops.aws import Clients
from ops.cli import main
from model import naming
from tests.tools import share_botocore_models

REGION = "us-east-2"


def instances(env: str, fleets: dict[str, int]) -> dict[str, Any]:
    items = [{"InstanceId": "i-0c0000000000000c0", "State": {"Name": "running"}, "PrivateIpAddress": "10.0.0.10",
              "Tags": [{"Key": naming.TAG_DEPLOYMENT, "Value": env}, {"Key": naming.TAG_ROLE, "Value": "control"},
                       {"Key": naming.TAG_FLEET, "Value": "control"}]}]
    for fleet, count in fleets.items():
        items += [{"InstanceId": f"i-{fleet[:3]}{n:013x}", "State": {"Name": "running"}, "PrivateIpAddress": "10.0.1.1",
                   "Tags": [{"Key": naming.TAG_DEPLOYMENT, "Value": env}, {"Key": naming.TAG_ROLE, "Value": fleet},
                            {"Key": naming.TAG_FLEET, "Value": fleet}]} for n in range(count)]
    return {"Reservations": [{"Instances": items}]}


def figure(query: dict[str, Any]) -> list[float]:
    """What CloudWatch would hold for one query (newest first); nothing for decode's KV cache on port 8003."""
    stat = query["MetricStat"]
    dims = {d["Name"]: d["Value"] for d in stat["Metric"]["Dimensions"]}
    name = stat["Metric"]["MetricName"]
    if name == "vllm:kv_cache_usage_perc" and dims.get("Port") == "8003":
        return []
    values = {"vllm:num_requests_running": int(dims.get("Port", "8000")) - 7999, "vllm:num_requests_waiting": 3,
              "vllm:kv_cache_usage_perc": 0.42, "vllm:gpu_cache_usage_perc": 0.5, "neuroncore_utilization_ratio": 0.875,
              "Requests": 120,
              "ServerErrorResponses": 2, "TimeToFirstToken": 180 if stat["Stat"] == "p50" else 900,
              "InterTokenLatency": 21.5 if stat["Stat"] == "p50" else 48}
    return [float(values[name]), 1.0]


class CloudWatch:
    """Answers GetMetricData through botocore's before-call hook (as Stubber does), after botocore validated the
    request; at most `page` results per response, the rest behind a NextToken."""

    def __init__(self, client: Any, page: int = 500) -> None:
        self.client, self.page, self.calls = client, page, []
        client.meta.events.register("before-parameter-build.cloudwatch.GetMetricData", self.record)
        client.meta.events.register("before-call.cloudwatch.GetMetricData", self.answer)

    def record(self, params: dict[str, Any], **_: Any) -> None:
        self.calls.append(dict(params))

    def answer(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        params = self.calls[-1]
        queries = params["MetricDataQueries"]
        start = int(params.get("NextToken") or 0)
        results = [{"Id": q["Id"], "StatusCode": "Complete", "Values": figure(q),
                    "Timestamps": [datetime(2026, 1, 1, tzinfo=timezone.utc)] * len(figure(q))}
                   for q in queries[start:start + self.page]]
        response: dict[str, Any] = {"MetricDataResults": results}
        if start + self.page < len(queries):
            response["NextToken"] = str(start + self.page)
        return AWSResponse("https://monitoring", 200, {}, None), response


@pytest.fixture
def aws(monkeypatch):
    share_botocore_models(monkeypatch)
    session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")

    def make(env: str, fleets: dict[str, int], page: int = 500) -> tuple[Clients, CloudWatch]:
        ec2 = session.client("ec2")
        stub = Stubber(ec2)
        stub.add_response("describe_instances", instances(env, fleets), {"Filters": ANY, "MaxResults": 1000})
        stub.activate()
        cloudwatch = CloudWatch(session.client("cloudwatch"), page)
        return Clients(session, {"ec2": ec2, "cloudwatch": cloudwatch.client}), cloudwatch
    return make


def dictl(capsys, clients: Clients, *argv: str) -> tuple[int, str, str]:
    code = main(["top", *argv], clients_factory=lambda region, profile: clients)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_once_json_has_one_row_per_endpoint_with_the_latest_values_and_the_proxys_figures(aws, capsys, monkeypatch):
    monkeypatch.setenv("DISTACK_ENV", "prod")
    clients, cloudwatch = aws("prod", {"prefill": 1, "decode": 1})
    code, out, err = dictl(capsys, clients, "--once", "--json")
    assert code == 0, err
    shot = json.loads(out)
    assert shot["deployment"] == "prod"
    assert shot["proxy"] == {"requests_per_min": 120, "server_errors_per_min": 2, "ttft_p50_ms": 180,
                             "ttft_p99_ms": 900, "itl_p50_ms": 21.5, "itl_p99_ms": 48}
    rows = {(e["role"], e["port"]): e for e in shot["endpoints"]}
    assert sorted(rows) == sorted((role, port) for role in ("prefill", "decode") for port in range(8000, 8004))
    assert rows[("decode", 8002)] | {"instance_id": "x"} == {
        "role": "decode", "fleet": "decode", "instance_id": "x", "port": 8002, "running": 3, "waiting": 3,
        "kv_cache": 0.42, "neuroncore_util": 0.875}
    assert rows[("decode", 8003)]["kv_cache"] is None  # no data point: shown as missing, not as 0
    (call,) = cloudwatch.calls
    assert len(call["MetricDataQueries"]) == 6 + 8 * 4
    per_endpoint = [q["MetricStat"]["Metric"] for q in call["MetricDataQueries"]
                    if q["MetricStat"]["Metric"]["MetricName"] == "vllm:num_requests_waiting"]
    assert {d["Name"] for d in per_endpoint[0]["Dimensions"]} == {"Deployment", "Fleet", "Role", "InstanceId", "Port"}


def test_more_than_500_queries_go_in_batches_each_followed_through_next_token(aws, capsys):
    # 32 prefill instances x 4 endpoints x 4 figures + the proxy's 6 = 518 queries; pages of 300 results.
    clients, cloudwatch = aws("prod", {"prefill": 32}, page=300)
    code, out, err = dictl(capsys, clients, "--env", "prod", "--json")
    assert code == 0, err
    assert [len(c["MetricDataQueries"]) for c in cloudwatch.calls] == [500, 500, 18]
    assert [c.get("NextToken") for c in cloudwatch.calls] == [None, "300", None]
    shot = json.loads(out)
    assert len(shot["endpoints"]) == 128 and all(e["waiting"] == 3 for e in shot["endpoints"])


def test_proxy_neuron_shows_worker_figures_without_proxy_ones_and_a_table_once(aws, capsys):
    clients, cloudwatch = aws("tutorial", {"prefill": 1, "decode": 1})
    code, out, err = dictl(capsys, clients, "--env", "tutorial", "--once")
    assert code == 0, err
    assert "proxy: neuron publishes no metrics" in out and "INSTANCE" in out
    names = {q["MetricStat"]["Metric"]["MetricName"] for q in cloudwatch.calls[0]["MetricDataQueries"]}
    # The legacy engine's vLLM exports the V0 gauge name.
    assert "vllm:gpu_cache_usage_perc" in names and not names & {"TimeToFirstToken", "Requests"}
    assert dictl(capsys, clients, "--env", "tutorial", "--interval", "0")[0] == 2
