"""What a stream has sent its client, so that a decode that dies after the first byte can be replaced: the text and
the number of tokens (content chunks) already sent, and the continuation's events made to follow on seamlessly.
The plan itself (the continuation request, Dynamo's semantics, what is refused) is diproxy/cache_routing/migration.py.

Tokens are counted as content-bearing chunks: vLLM streams one token per chunk (its stream_interval defaults to 1);
with a larger interval the count is low, so the continuation's budget is reduced by less than was generated and the
answer may run past the client's max_tokens by that many tokens (docs/routing.md)."""

from __future__ import annotations

import json
from typing import Any

from diproxy.sse import StreamEvent

# Failures that migrate, as Dynamo's (lib/llm/src/migration.rs@0135b9a5: CannotConnect, Disconnected,
# ConnectionTimeout): the connection broke, never a worker's own error answer.
MIGRATING_KINDS = ("connect", "stream", "timeout")


class StreamProgress:
    def __init__(self) -> None:
        self._parts: list[str] = []
        self.tokens = 0
        self.usage_offset = 0  # completion tokens sent before the current continuation
        self.drop_role = False  # chat: the continuation's first delta repeats role "assistant"

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def observe(self, event: StreamEvent) -> None:
        """One event on its way to the client (the relay calls this before writing it)."""
        payload = event.payload
        if not isinstance(payload, dict):
            return
        changed = False
        choices = payload.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if self.drop_role and "role" in delta:
                    del delta["role"]
                    changed = True
                self.drop_role = False
                content = delta.get("content")
            else:
                content = choice.get("text")
            if isinstance(content, str) and content:
                self._parts.append(content)
                self.tokens += 1
        usage = payload.get("usage")
        if self.usage_offset and isinstance(usage, dict):
            # The continuation's prompt holds the tokens already sent: give them back to the completion.
            _shift(usage, self.usage_offset)
            changed = True
        if changed:
            event.data = json.dumps(payload, separators=(",", ":"))

    def continuing(self, drop_role: bool) -> None:
        """A continuation starts: its usage counts from here, and (chat) its first delta's role is dropped."""
        self.usage_offset = self.tokens
        self.drop_role = drop_role


def _shift(usage: dict[str, Any], offset: int) -> None:
    if isinstance(usage.get("completion_tokens"), int):
        usage["completion_tokens"] += offset
    if isinstance(usage.get("prompt_tokens"), int):
        usage["prompt_tokens"] = max(0, usage["prompt_tokens"] - offset)
