"""The two CloudWatch calls the shipper makes, synchronous (run them in a thread): PutLogEvents to one stream and
PutMetricData to one namespace."""

from __future__ import annotations

from typing import Any, Sequence

from botocore.exceptions import ClientError

from diproxy.shipper.log_batches import LogEntry

# PutMetricData takes up to 1,000 datums per call:
# https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricData.html
MAX_DATUMS_PER_CALL = 1000


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class LogStreamWriter:
    def __init__(self, client: Any, group: str, stream: str) -> None:
        self.client, self.group, self.stream = client, group, stream
        self._stream_ready = False

    def _ensure_stream(self) -> None:
        try:
            self.client.create_log_stream(logGroupName=self.group, logStreamName=self.stream)
        except ClientError as exc:
            if _error_code(exc) != "ResourceAlreadyExistsException":
                raise
        self._stream_ready = True

    def put(self, batch: Sequence[LogEntry]) -> int:
        """Send one batch; returns how many events CloudWatch Logs rejected as too old, too new or expired."""
        if not self._stream_ready:
            self._ensure_stream()
        events = [{"timestamp": e.timestamp_ms, "message": e.message} for e in batch]
        try:
            reply = self.client.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=events)
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
            self._ensure_stream()  # the stream was deleted under us; the group must exist (the stack owns it)
            reply = self.client.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=events)
        return _rejected_count(reply.get("rejectedLogEventsInfo") or {}, len(events))


def _rejected_count(info: dict[str, int], total: int) -> int:
    """Indexes in rejectedLogEventsInfo: events before tooNewLogEventStartIndex are fine unless before
    tooOldLogEventEndIndex or expiredLogEventEndIndex; events from tooNewLogEventStartIndex on are rejected."""
    old_end = max(info.get("tooOldLogEventEndIndex", -1), info.get("expiredLogEventEndIndex", -1))
    new_start = info.get("tooNewLogEventStartIndex", total)
    return (old_end + 1) + (total - new_start)


class MetricPublisher:
    def __init__(self, client: Any, namespace: str) -> None:
        self.client, self.namespace = client, namespace

    def put(self, datums: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(datums), MAX_DATUMS_PER_CALL):
            self.client.put_metric_data(Namespace=self.namespace, MetricData=list(datums[start:start + MAX_DATUMS_PER_CALL]))
