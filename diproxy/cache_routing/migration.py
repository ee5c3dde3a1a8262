"""The continuation of a stream whose decode died after the client's first byte: prompt + the tokens already sent,
asking only for what remains, so the client's stream goes on with no token repeated or missing.

Dynamo's semantics (ai-dynamo/dynamo lib/llm/src/migration.rs@0135b9a5, docs/architecture/request_migration.md@
90220105): each generated token is appended to the request's token ids and max_tokens is reduced by the tokens
already generated (RetryManager.track_response); the new stream keeps the request's id (Context::with_id); the
number of migrations is bounded by --migration-limit (default 0: none); only connection-class failures migrate
(CannotConnect, Disconnected, ConnectionTimeout, EngineShutdown; never a cancellation); guided decoding is never
migrated, because the new engine would restart its grammar from the schema root.

Dynamo works on token ids behind its own tokenizer; the proxy works on the OpenAI API, so:
- with the prompt's and the answer's token ids (completions, and token_ids known), the continuation is a completions
  request whose prompt is those ids: exact, as Dynamo's;
- otherwise the answer's text is appended (completions: to the prompt; chat: as a final assistant message with vLLM's
  continue_final_message and add_generation_prompt false). Re-tokenizing text can split the boundary differently
  from the original tokens, so the next tokens can differ from what the dead decode would have produced; none is
  repeated or lost.
Limits (refused: plan() returns None and the stream fails as before):
- n > 1 or best_of > 1: several choices would each need their own continuation;
- guided decoding (response_format json_schema/json_object, guided_*, structured_outputs, tool_choice "required" or
  a named tool): Dynamo's reason above;
- echo and prompt_logprobs: they would report the continuation's prompt, not the client's.
Kept, with a caveat:
- logprobs / top_logprobs: the continuation's tokens carry theirs; those already sent are unchanged;
- seed: the sampler's random state is not transferable: a seeded stream stays valid but is not what one
  uninterrupted run would have produced; greedy (temperature 0) continues exactly (up to re-tokenization);
- frequency/presence penalties count only the continuation's own output in vLLM, the tokens moved into the prompt
  no longer count; repetition_penalty sees both, as before;
- stop strings that straddle the break are missed by both engines; min_tokens is reduced like max_tokens;
- usage: the continuation's prompt_tokens include the answer so far: the proxy must report the client's own
  prompt_tokens and the sum of completion tokens (usage_offset)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
           "structured_outputs")


@dataclass(frozen=True)
class Continuation:
    body: dict[str, Any]
    path: str
    attempt: int  # 1 for the first migration
    usage_offset: int  # completion tokens already sent, to add to the continuation's usage
    drop_role: bool  # chat: the continuation's first delta repeats role "assistant"; the client already had it


def refusal(body: dict[str, Any]) -> str | None:
    """Why a request's stream cannot be migrated, or None."""
    if int(body.get("n", 1) or 1) > 1 or int(body.get("best_of", 1) or 1) > 1:
        return "n > 1"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        return "guided decoding"
    if any(body.get(key) for key in _GUIDED):
        return "guided decoding"
    choice = body.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        return "guided decoding"
    if body.get("echo") or body.get("prompt_logprobs"):
        return "echo or prompt_logprobs"
    return None


def _remaining(body: dict[str, Any], key: str, sent: int) -> None:
    if body.get(key) is not None:
        body[key] = max(1, int(body[key]) - sent) if key != "min_tokens" else max(0, int(body[key]) - sent)


def plan(body: dict[str, Any], path: str, sent_text: str, sent_tokens: int, migrations_done: int, limit: int,
         prompt_token_ids: list[int] | None = None, sent_token_ids: list[int] | None = None) -> Continuation | None:
    """The request that continues body's stream after sent_tokens tokens (text sent_text) reached the client, or
    None if it cannot be migrated (limit reached, refusal(), or nothing left to generate)."""
    if migrations_done >= limit or refusal(body) is not None:
        return None
    cont = dict(body)
    cont.pop("kv_transfer_params", None)
    for key in ("max_tokens", "max_completion_tokens"):
        if cont.get(key) is not None and int(cont[key]) - sent_tokens <= 0:
            return None  # the answer was complete: nothing to continue
        _remaining(cont, key, sent_tokens)
    _remaining(cont, "min_tokens", sent_tokens)
    chat = path.endswith("/chat/completions")
    if not chat and prompt_token_ids is not None and sent_token_ids is not None:
        cont["prompt"] = list(prompt_token_ids) + list(sent_token_ids)
    elif not chat:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return None  # a batch or token prompt without the answer's ids: no exact continuation
        cont["prompt"] = prompt + sent_text
    else:
        messages = list(body.get("messages") or [])
        messages.append({"role": "assistant", "content": sent_text})
        cont["messages"] = messages
        # vLLM's chat extensions: render the last assistant message open, without a new generation prompt.
        cont["continue_final_message"] = True
        cont["add_generation_prompt"] = False
    return Continuation(cont, path, migrations_done + 1, sent_tokens, chat)
