"""PutLogEvents batch limits, the exposition parser on the proxy's own output, and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from diproxy.metrics import Counter
from diproxy.shipper.log_batches import MAX_BATCH_SPAN_MS, MAX_EVENT_BYTES, LogEntry, batches
from diproxy.shipper.prometheus_text import parse

ROOT = Path(__file__).resolve().parents[2]


def _entries(count: int, message: str = "x", step_ms: int = 1) -> list[LogEntry]:
    return [LogEntry(1_000_000 + i * step_ms, message, f"c{i}") for i in range(count)]


def test_a_batch_holds_at_most_ten_thousand_events() -> None:
    assert [len(b) for b in batches(_entries(20_001))] == [10_000, 10_000, 1]


def test_a_batch_holds_at_most_one_mebibyte_counting_26_bytes_per_event() -> None:
    # Four events cut to the event limit fill a batch exactly (4 x (262,118 + 26) = 1,048,576); a fifth spills.
    sizes = [[len(e.message.encode()) for e in b] for b in batches(_entries(5, "y" * 300_000))]
    assert sizes == [[MAX_EVENT_BYTES] * 4, [MAX_EVENT_BYTES]]


def test_a_batch_spans_at_most_a_day_and_never_goes_back_in_time() -> None:
    entries = [LogEntry(5_000, "a", "c1"), LogEntry(4_000, "clock stepped back", "c2"),
               LogEntry(5_000 + MAX_BATCH_SPAN_MS + 1, "a day later", "c3"), LogEntry(0, "", "c4")]
    result = list(batches(entries))
    assert [[(e.timestamp_ms, e.message) for e in b] for b in result] == [
        [(5_000, "a"), (5_000, "clock stepped back")],
        [(5_000 + MAX_BATCH_SPAN_MS + 1, "a day later"), (5_000 + MAX_BATCH_SPAN_MS + 1, " ")]]
    assert [b[-1].cursor for b in result] == ["c2", "c4"]


def test_parser_reads_back_label_values_the_proxy_escapes() -> None:
    counter = Counter("diproxy_errors_total", "Failures.", ("kind",))
    counter.inc('quote " backslash \\ newline \n end', amount=2)
    scrape = parse("\n".join(counter.render()))
    (sample,) = scrape.samples
    assert sample.label("kind") == 'quote " backslash \\ newline \n end' and sample.value == 2
    assert scrape.types == {"diproxy_errors_total": "counter"}


def test_missing_settings_exit_2_with_the_variable_to_set_and_no_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIPROXY_")}
    done = subprocess.run([sys.executable, "-m", "diproxy.shipper", "--once"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert "--log-group is required: pass it or set DIPROXY_CLOUDWATCH_LOG_GROUP" in done.stderr
    assert "Traceback" not in done.stderr
