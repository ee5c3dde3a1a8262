"""Split journal entries into PutLogEvents batches that CloudWatch Logs accepts.

Limits: at most 10,000 events and 1,048,576 bytes per call, counted as each message's UTF-8 size plus 26 bytes;
events in chronological order; one call spanning at most 24 hours.
https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutLogEvents.html
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26
# One event may be larger today, but 256 KiB was the limit for years and keeps any region safe.
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD_BYTES
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000
TRUNCATED = " [truncated]"


@dataclass(frozen=True)
class LogEntry:
    """One journal entry: its time (ms since the epoch), its text, and the journal cursor just after it."""

    timestamp_ms: int
    message: str
    cursor: str

    def size(self) -> int:
        return len(self.message.encode()) + EVENT_OVERHEAD_BYTES


def fit_message(message: str) -> str:
    """The message cut to the event size limit on a character boundary, marked when cut; never empty."""
    if not message:
        return " "  # CloudWatch Logs rejects an empty message
    encoded = message.encode()
    if len(encoded) <= MAX_EVENT_BYTES:
        return message
    room = MAX_EVENT_BYTES - len(TRUNCATED.encode())
    return encoded[:room].decode(errors="ignore") + TRUNCATED


def batches(entries: Iterable[LogEntry]) -> Iterator[list[LogEntry]]:
    """Consecutive batches in journal order. Timestamps that go backwards (a clock step) are raised to the
    previous one, so each batch is chronological without reordering the journal."""
    batch: list[LogEntry] = []
    size = 0
    last_ms = 0
    for entry in entries:
        entry = LogEntry(max(entry.timestamp_ms, last_ms), fit_message(entry.message), entry.cursor)
        last_ms = entry.timestamp_ms
        full = (len(batch) >= MAX_BATCH_EVENTS or size + entry.size() > MAX_BATCH_BYTES
                or (batch and entry.timestamp_ms - batch[0].timestamp_ms > MAX_BATCH_SPAN_MS))
        if batch and full:
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += entry.size()
    if batch:
        yield batch
