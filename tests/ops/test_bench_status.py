"""The status benchmark's call counts: they grow with result pages (50 instances each), not per instance."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "ops_status.py"


def test_status_calls_grow_with_pages_not_instances(aws_env) -> None:
    spec = importlib.util.spec_from_file_location("ops_status", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls, _, code = module.measure(200)
    assert code == 0
    assert calls["ssm.SendCommand"] == 1
    assert calls["ssm.ListCommandInvocations"] == 4
    assert calls["ssm.ListCommands"] == 1 and calls["ec2.DescribeInstances"] == 1
    assert "ssm.GetCommandInvocation" not in calls
    assert sum(calls.values()) <= 10
