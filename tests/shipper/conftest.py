"""Fixtures for the CloudWatch shipper: CloudWatch from moto, settings pointing at a test proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

from diproxy.shipper.settings import parse_settings
from tests.tools import share_botocore_models

REGION = "us-east-2"


@pytest.fixture
def cloudwatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's CloudWatch."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    share_botocore_models(monkeypatch)
    with mock_aws():
        yield boto3.client("cloudwatch", region_name=REGION)


def shipper_settings(tmp_path: Path, *extra: str, metrics_url: str = "http://127.0.0.1:9/metrics"):
    return parse_settings(["--deployment", "test", "--region", REGION, "--state-dir", str(tmp_path / "state"),
                           "--metrics-url", metrics_url, *extra], env={})


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
