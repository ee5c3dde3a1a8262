"""Fixtures for the CloudWatch shipper: a fake journal behind a fake journalctl, and CloudWatch from moto."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

from diproxy.shipper.settings import parse_settings
from tests.tools import share_botocore_models

FAKES = Path(__file__).parent / "fakes"
REGION = "us-east-2"
LOG_GROUP = "/distack/test/containers"
LOG_STREAM = "control/i-0123456789abcdef0/distack-proxy"


class FakeJournal:
    """The proxy unit's journal as journalctl's JSON lines, and the calls journalctl received."""

    def __init__(self, root: Path) -> None:
        self.path = root / "journal.jsonl"
        self.calls_path = root / "journalctl-calls.jsonl"
        self.path.write_text("")
        self.count = 0
        self.started_us = int((time.time() - 3600) * 1_000_000)

    def add(self, message: Any, at_us: int | None = None) -> str:
        self.count += 1
        cursor = f"s=abc;i={self.count:x}"
        # Recent times: CloudWatch Logs (and moto) reject events older than 14 days.
        at_us = at_us if at_us is not None else self.started_us + self.count * 1000
        record = {"__CURSOR": cursor, "__REALTIME_TIMESTAMP": str(at_us), "MESSAGE": message,
                  "_SYSTEMD_UNIT": "distack-proxy.service", "PRIORITY": "6"}
        with self.path.open("a") as journal:
            journal.write(json.dumps(record) + "\n")
        return cursor

    def calls(self) -> list[list[str]]:
        if not self.calls_path.exists():
            return []
        return [json.loads(line) for line in self.calls_path.read_text().splitlines()]


@pytest.fixture
def journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeJournal:
    fake = FakeJournal(tmp_path)
    monkeypatch.setenv("FAKE_JOURNAL", str(fake.path))
    monkeypatch.setenv("FAKE_JOURNAL_CALLS", str(fake.calls_path))
    return fake


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """moto's CloudWatch Logs and CloudWatch, with the stack's log group already there."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    share_botocore_models(monkeypatch)
    with mock_aws():
        logs = boto3.client("logs", region_name=REGION)
        logs.create_log_group(logGroupName=LOG_GROUP)
        yield {"logs": logs, "cloudwatch": boto3.client("cloudwatch", region_name=REGION)}


def shipper_settings(tmp_path: Path, *extra: str, metrics_url: str = "http://127.0.0.1:9/metrics"):
    return parse_settings(["--log-group", LOG_GROUP, "--log-stream", LOG_STREAM, "--deployment", "test",
                           "--region", REGION, "--state-dir", str(tmp_path / "state"),
                           "--journalctl", str(FAKES / "journalctl"), "--metrics-url", metrics_url, *extra], env={})


def shipped_messages(logs: Any) -> list[str]:
    """Every message in the proxy's log stream, oldest first (following GetLogEvents' forward tokens)."""
    messages: list[str] = []
    token = None
    while True:
        extra = {"nextToken": token} if token else {}
        try:
            reply = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=LOG_STREAM, startFromHead=True, **extra)
        except logs.exceptions.ResourceNotFoundException:
            return []  # the shipper creates the stream with its first batch
        messages += [event["message"] for event in reply["events"]]
        if not reply["events"] or reply["nextForwardToken"] == token:
            return messages
        token = reply["nextForwardToken"]


def metric_sum(cloudwatch: Any, name: str, statistic: str = "Sum", **dimensions: str) -> float | None:
    """One statistic of a metric over the last day, or None if CloudWatch has no data point for it."""
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    reply = cloudwatch.get_metric_statistics(
        Namespace="DiStack/Proxy", MetricName=name, StartTime=now - timedelta(days=1), EndTime=now + timedelta(hours=1),
        Period=86400, Statistics=[statistic],
        Dimensions=[{"Name": "Deployment", "Value": "test"}] + [{"Name": k, "Value": v} for k, v in dimensions.items()])
    points = reply["Datapoints"]
    return sum(p[statistic] for p in points) if points else None

