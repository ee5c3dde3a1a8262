"""The status benchmark's call counts: they grow with result pages, not per instance.

bench/ops_status.py measures 50 and 200 instances against 50-result pages; here the page is 3 results, so
1, 4 and 7 instances span 1, 2 and 3 pages and the same law shows with a few instances (moto takes ~10 ms
per instance it serializes). tests/ops/test_cli.py checks that dictl asks for the API's 50 per page."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

from ops import commands

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "ops_status.py"
PAGE = 3


def test_status_calls_grow_with_pages_not_instances(aws_env, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("ops_status", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(commands, "INVOCATIONS_PAGE", PAGE)
    per_page: list[Counter[str]] = []
    for instances, pages in ((1, 1), (4, 2), (7, 3)):
        calls, _, code = module.measure(instances)
        assert code == 0
        assert calls["ssm.ListCommandInvocations"] == pages, (instances, calls)
        assert calls["ssm.SendCommand"] == 1
        assert calls["ssm.ListCommands"] == 1 and calls["ec2.DescribeInstances"] == 1
        assert "ssm.GetCommandInvocation" not in calls
        per_page.append(calls - Counter({"ssm.ListCommandInvocations": pages}))
    # Everything but the result pages is the same whatever the instance count.
    assert per_page[0] == per_page[1] == per_page[2]
    assert sum(per_page[0].values()) <= 9
