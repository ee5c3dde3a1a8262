"""Server-sent-event framing of OpenAI streams: split upstream bytes into events, rewrite and re-emit them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

DONE = "[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"  # how StreamEvent.encode() writes it, and vLLM too
# A top-level "id" written as the object's first member, as vLLM does: {"id":"cmpl-...", ...
# The string pattern is the unrolled form of ("(?:[^"\\]|\\.)*"): the same strings, five times faster to match.
_LEADING_ID = re.compile(r'\{\s*"id"\s*:\s*("[^"\\]*(?:\\.[^"\\]*)*")')


@dataclass
class StreamEvent:
    """One `data:` event; payload is the decoded JSON, or None for [DONE] and non-JSON data."""

    data: str
    payload: Any = None

    @property
    def is_done(self) -> bool:
        return self.data.strip() == DONE

    def choice_indices(self) -> list[int]:
        if not isinstance(self.payload, dict):
            return []
        return [c.get("index", 0) for c in self.payload.get("choices") or [] if isinstance(c, dict)]

    def has_choices(self) -> bool:
        return isinstance(self.payload, dict) and bool(self.payload.get("choices"))

    def encode(self) -> bytes:
        if self.payload is not None:
            body = json.dumps(self.payload, separators=(",", ":"))
        else:
            body = self.data
        return f"data: {body}\n\n".encode()

    def encode_with_id(self, client_id: str) -> bytes:
        """The event with its top-level id set to client_id. When the id leads the object, the new id is spliced
        into the upstream text: the rest is forwarded as received instead of being encoded again per chunk."""
        payload = self.payload
        if isinstance(payload, dict) and "id" in payload:
            match = _LEADING_ID.match(self.data)
            # A raw line break would split the event; any other "id" (a duplicate, a tool call's) needs real JSON.
            if match is not None and self.data.count('"id"') == 1 and "\n" not in self.data and "\r" not in self.data:
                start, end = match.span(1)
                return f"data: {self.data[:start]}{json.dumps(client_id)}{self.data[end:]}\n\n".encode()
        rewrite_id(payload, client_id)
        return self.encode()


def parse_event(data: str) -> StreamEvent:
    event = StreamEvent(data)
    if not event.is_done:
        try:
            event.payload = json.loads(data)
        except ValueError:
            pass
    return event


class EventDecoder:
    """Incremental SSE parser: feed it the bytes of each upstream read, get back the events they completed.
    Working per read (not per line) lets the relay forward everything that arrived together in one write."""

    def __init__(self) -> None:
        self._partial_line = b""
        self._data_lines: list[str] = []

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        buffer = self._partial_line + chunk if self._partial_line else chunk
        lines = buffer.split(b"\n")
        self._partial_line = lines.pop()
        events: list[StreamEvent] = []
        for raw in lines:
            self._take_line(raw, events)
        return events

    def finish(self) -> list[StreamEvent]:
        """The end of the stream: an unterminated last line and an event without its blank line still count."""
        events: list[StreamEvent] = []
        if self._partial_line:
            self._take_line(self._partial_line, events)
            self._partial_line = b""
        if self._data_lines:
            events.append(parse_event("\n".join(self._data_lines)))
            self._data_lines = []
        return events

    def _take_line(self, raw: bytes, events: list[StreamEvent]) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if self._data_lines:
                events.append(parse_event("\n".join(self._data_lines)))
                self._data_lines = []
            return
        if line.startswith("data:"):
            value = line[5:]
            self._data_lines.append(value[1:] if value.startswith(" ") else value)


def rewrite_id(payload: Any, client_id: str) -> None:
    if isinstance(payload, dict) and "id" in payload:
        payload["id"] = client_id


def clear_finish_reason(payload: Any) -> None:
    """Prefill stops after one token by design; its 'length' stop is not the client's stop."""
    if isinstance(payload, dict):
        for choice in payload.get("choices") or []:
            if isinstance(choice, dict) and "finish_reason" in choice:
                choice["finish_reason"] = None


def error_event(message: str, kind: str, code: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}}, separators=(",", ":"))
    return f"data: {body}\n\n".encode()
