"""Server-sent-event framing of OpenAI streams: split upstream bytes into events, rewrite and re-emit them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

DONE = "[DONE]"


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


def parse_event(data: str) -> StreamEvent:
    event = StreamEvent(data)
    if not event.is_done:
        try:
            event.payload = json.loads(data)
        except ValueError:
            pass
    return event


async def read_events(lines: AsyncIterator[bytes]) -> AsyncIterator[StreamEvent]:
    """Events from an SSE byte stream given line by line; multi-line data fields are joined."""
    data_lines: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data_lines:
                yield parse_event("\n".join(data_lines))
                data_lines = []
            continue
        if line.startswith("data:"):
            value = line[5:]
            data_lines.append(value[1:] if value.startswith(" ") else value)
    if data_lines:
        yield parse_event("\n".join(data_lines))


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
