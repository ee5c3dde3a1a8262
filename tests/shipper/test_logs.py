"""The proxy's journal reaches its CloudWatch Logs stream: in order, once, from the saved cursor on, and nothing
is marked sent that CloudWatch did not take."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from diproxy.shipper.log_batches import MAX_EVENT_BYTES, TRUNCATED
from diproxy.shipper.service import run
from tests.shipper.conftest import LOG_GROUP, metric_sum, shipped_messages, shipper_settings


def _option(call: list[str], flag: str) -> str | None:
    return call[call.index(flag) + 1] if flag in call else None


def test_entries_arrive_in_order_and_a_second_run_sends_only_new_ones(journal, aws, tmp_path) -> None:
    journal.add("INFO diproxy: starting in di mode on 0.0.0.0:8000")
    journal.add([0x63, 0x61, 0x66, 0xE9])  # journald's form of a message that is not UTF-8
    third = journal.add("WARNING diproxy.routing: prefill 10.0.0.5:8000 failed before the first byte; retrying")
    settings = shipper_settings(tmp_path, "--once")

    assert asyncio.run(run(settings)) == 0
    assert shipped_messages(aws["logs"]) == [
        "INFO diproxy: starting in di mode on 0.0.0.0:8000", "caf\ufffd",
        "WARNING diproxy.routing: prefill 10.0.0.5:8000 failed before the first byte; retrying"]
    assert (tmp_path / "state" / "journal-cursor").read_text().strip() == third
    first_call = journal.calls()[0]
    assert _option(first_call, "--unit") == "distack-proxy.service"
    assert "--boot" in first_call and "--after-cursor" not in first_call and "--follow" not in first_call

    journal.add("INFO diproxy.registry: decode 10.0.0.7:8000 joined")
    assert asyncio.run(run(settings)) == 0
    assert shipped_messages(aws["logs"])[3:] == ["INFO diproxy.registry: decode 10.0.0.7:8000 joined"]
    assert len(shipped_messages(aws["logs"])) == 4
    assert _option(journal.calls()[1], "--after-cursor") == third


def test_a_missing_log_group_fails_the_run_and_keeps_everything_for_the_next(journal, aws, tmp_path, caplog) -> None:
    aws["logs"].delete_log_group(logGroupName=LOG_GROUP)
    journal.add("first")
    journal.add("second")
    settings = shipper_settings(tmp_path, "--once")

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(run(settings)) == 1
    assert "logs not sent" in caplog.text and "ResourceNotFoundException" in caplog.text
    assert not (tmp_path / "state" / "journal-cursor").exists()

    aws["logs"].create_log_group(logGroupName=LOG_GROUP)
    assert asyncio.run(run(settings)) == 0
    assert shipped_messages(aws["logs"]) == ["first", "second"]


def test_many_and_oversized_entries_are_split_into_accepted_batches(journal, aws, tmp_path) -> None:
    for i in range(10_050):
        journal.add(f"line {i}")
    journal.add("x" * (MAX_EVENT_BYTES + 5000))
    assert asyncio.run(run(shipper_settings(tmp_path, "--once"))) == 0
    messages = shipped_messages(aws["logs"])
    assert len(messages) == 10_051
    assert messages[:2] == ["line 0", "line 1"] and messages[10_049] == "line 10049"
    assert messages[-1].endswith(TRUNCATED) and len(messages[-1].encode()) == MAX_EVENT_BYTES


def test_a_failing_journalctl_is_reported_and_fails_the_run(journal, aws, tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_JOURNAL_FAIL", "1")
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(run(shipper_settings(tmp_path, "--once"))) == 1
    assert "journalctl exited 1: Failed to open journal: Permission denied" in caplog.text


async def _until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_the_service_follows_the_journal_publishes_each_interval_and_flushes_on_sigterm(journal, aws, tmp_path) -> None:
    settings = shipper_settings(tmp_path, "--flush-interval", "0.1", "--interval", "0.2")

    async def scenario() -> int:
        service = asyncio.create_task(run(settings))
        journal.add("first")
        await _until(lambda: shipped_messages(aws["logs"]) == ["first"], "the first line in CloudWatch Logs")
        journal.add("second")
        await _until(lambda: shipped_messages(aws["logs"]) == ["first", "second"], "a line added while following")
        # No proxy answers on the metrics URL, so each interval reports it as down.
        await _until(lambda: metric_sum(aws["cloudwatch"], "ProxyUp", "SampleCount"), "a ProxyUp data point")
        assert metric_sum(aws["cloudwatch"], "ProxyUp", "Maximum") == 0
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(service, 15)

    assert asyncio.run(scenario()) == 0
    (call,) = journal.calls()
    assert "--follow" in call and _option(call, "--lines") == "all"


def test_lines_still_buffered_at_sigterm_are_sent_before_exit(journal, aws, tmp_path) -> None:
    settings = shipper_settings(tmp_path, "--flush-interval", "600", "--interval", "600")
    journal.add("last words before a stop")

    async def scenario() -> int:
        service = asyncio.create_task(run(settings))
        await _until(lambda: journal.calls(), "journalctl to start")
        await asyncio.sleep(0.5)  # the fake prints at once; leave the reader time to take the line
        assert shipped_messages(aws["logs"]) == []  # the 600 s flush interval has not come yet
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(service, 15)

    assert asyncio.run(scenario()) == 0
    assert shipped_messages(aws["logs"]) == ["last words before a stop"]

