"""Reading and checking a client's request body before any worker sees it: every malformed request ends here with a
400 naming the field, never a traceback, and nothing the proxy routes on (stream, n, max_tokens, the prompt) is
taken on trust.

The checks are the proxy's own, not vLLM's: vLLM validates the rest of a request itself. The proxy checks what it
acts on (a `stream` it branches on, a prefill hop that computes one sequence's KV) and what bounds its cost (prompt
arrays, token counts) before it spends a prefill on a request that decode would refuse.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from diproxy.errors import ClientFacingError

# A served model name as clients send it: a Hugging Face repository id (owner/name) or a plain name. Anything else
# (`../..`, URLs, spaces) is refused before it reaches a worker's logs or paths.
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
# Token ids are non-negative 32-bit integers in every tokenizer vLLM loads.
_MAX_TOKEN_ID = 2**31 - 1


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for. max_model_len bounds max_tokens and the token-id prompts; max_n is 1 for a
    disaggregated deployment (see `check`); max_prompts bounds a batch of prompts in one completions request."""

    max_model_len: int
    max_n: int = 1
    max_prompts: int = 64
    # The reason `n` is capped, given with the 400 (the DI proxies set it).
    n_reason: str = ""


def bad_request(message: str, code: str = "invalid_request") -> ClientFacingError:
    return ClientFacingError(400, message, "invalid_request_error", code)


def _refuse_constant(name: str) -> Any:
    # JSON has no NaN or Infinity; Python's json accepts them by default and would forward them to a worker.
    raise ValueError(f"{name} is not a JSON number")


def parse_body(raw: bytes, charset: str | None) -> dict[str, Any]:
    """The request body as a JSON object. Unknown charsets, undecodable bytes, NaN/Infinity, nesting deeper than the
    parser's recursion limit and non-object bodies are each a 400."""
    try:
        text = raw.decode(charset or "utf-8")
    except LookupError:
        raise bad_request(f"unknown charset {charset!r} in Content-Type; send UTF-8", "invalid_charset") from None
    except UnicodeDecodeError:
        raise bad_request(f"request body is not valid {charset or 'utf-8'}", "invalid_encoding") from None
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise bad_request("request body is nested too deeply", "invalid_json") from None
    except ValueError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", "invalid_json")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(t) and 0 <= t <= _MAX_TOKEN_ID for t in value)


def _prompt_problems(prompt: Any, limits: RequestLimits) -> list[str]:
    """OpenAI's completions `prompt`: a string, a list of strings, a list of token ids, or a list of token-id lists."""
    if isinstance(prompt, str):
        return []
    if not isinstance(prompt, list) or not prompt:
        return ["prompt must be a string, a non-empty list of strings, a list of token ids or a list of such lists"]
    if _token_ids(prompt):
        return [] if len(prompt) <= limits.max_model_len else [
            f"prompt has {len(prompt)} token ids, more than max_model_len {limits.max_model_len}"]
    if len(prompt) > limits.max_prompts:
        return [f"prompt holds {len(prompt)} prompts; at most {limits.max_prompts} per request"]
    if all(isinstance(p, str) for p in prompt):
        return []
    if all(_token_ids(p) and p for p in prompt):
        longest = max(len(p) for p in prompt)
        return [] if longest <= limits.max_model_len else [
            f"a prompt has {longest} token ids, more than max_model_len {limits.max_model_len}"]
    return ["prompt must be a string, a non-empty list of strings, a list of token ids or a list of such lists"]


def _messages_problems(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["messages must be a non-empty list of message objects"]
    bad = [i for i, m in enumerate(messages) if not isinstance(m, dict) or not isinstance(m.get("role"), str)]
    return [f"messages[{bad[0]}] must be an object with a string role"] if bad else []


def _positive_int(body: dict[str, Any], field: str, bound: int, above: str) -> list[str]:
    """The problem with BODY[FIELD] as a positive integer at most BOUND (none when absent)."""
    value = body.get(field)
    if value is None:
        return []
    if not _is_int(value) or value < 1:
        return [f"{field} must be a positive integer"]
    return [f"{field} {value} is {above}"] if value > bound else []


def check(path: str, body: dict[str, Any], limits: RequestLimits) -> None:
    """Raise one 400 listing every problem of BODY for PATH (/v1/completions or /v1/chat/completions)."""
    problems: list[str] = []
    model = body.get("model")
    if model is not None and not (isinstance(model, str) and _MODEL_ID.match(model)):
        problems.append("model must be a model id such as owner/name (letters, digits, '.', '_', '-')")
    for field in ("stream", "echo"):
        if field in body and body[field] is not None and not isinstance(body[field], bool):
            problems.append(f"{field} must be true or false (JSON booleans), not {json.dumps(body[field])}")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        problems.append("stream_options must be an object")
    for field in ("n", "best_of"):
        problems += _positive_int(body, field, limits.max_n, f"above {limits.max_n}{limits.n_reason}")
    for field in ("max_tokens", "max_completion_tokens"):
        problems += _positive_int(body, field, limits.max_model_len,
                                  f"above the model's max_model_len {limits.max_model_len}")
    for field, value in body.items():
        if isinstance(value, float) and not math.isfinite(value):  # only reachable for bodies built in Python
            problems.append(f"{field} must be a finite number")
    if path.endswith("/chat/completions"):
        problems += _messages_problems(body.get("messages"))
    else:
        problems += _prompt_problems(body.get("prompt"), limits)
    if problems:
        raise bad_request("; ".join(problems))
