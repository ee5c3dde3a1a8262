"""A request's prefix as chained block keys: key i names blocks 0..i together, so two requests share key i only if
their first i+1 blocks are equal, as in vLLM's prefix cache (vllm/v1/core/kv_cache_utils.py hash_block_tokens: each
block's hash covers its parent's hash and its own tokens) and in llm-d's approximate scorer
(llm-d/llm-d-inference-scheduler pkg/epp/framework/plugins/requestcontrol/dataproducer/approximateprefix/
hashing.go@520af478 hashPrompt: hash(block i, hash(i-1)), the first seeded with the model and cache_salt).

Only full blocks get a key: vLLM caches only full blocks, so a partial tail can never be a hit.

The hash is BLAKE2b cut to 64 bits, not Python's hash(): str/bytes hashes are salted per process (PYTHONHASHSEED),
and two proxies must compute the same keys for the same prompt."""

from __future__ import annotations

import json
from array import array
from hashlib import blake2b
from typing import Any, Iterable, Sequence

# llm-d's estimate when the request is not tokenized (prefix_based_pd_decider.go AverageCharactersPerToken = 4).
CHARS_PER_TOKEN = 4
# The root of every chain: the parent key of a prompt's first block.
ROOT = 0
_PERSON = b"distack-prefix"  # BLAKE2b personalisation: these keys never collide with another use of the hash


def _key(digest: bytes) -> int:
    return int.from_bytes(digest, "little")


def _part_text(part: Any) -> str:
    if isinstance(part, dict) and part.get("type") == "text":
        return str(part.get("text", ""))
    # Images, audio and other parts: their JSON, so two different images never share a key.
    return json.dumps(part, sort_keys=True, separators=(",", ":"))


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_part_text(part) for part in content)
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


def prompt_bytes(body: dict[str, Any]) -> bytes:
    """What a request's prefix is made of, in the order the engine reads it: for chat, the tools (templates put them
    first) then each message's role and content in order; for completions, the prompt. A field separator (0x1f) and
    a record separator (0x1e) keep "ab"+"c" apart from "a"+"bc"."""
    messages = body.get("messages")
    if isinstance(messages, list):
        pieces: list[str] = []
        tools = body.get("tools")
        if tools:
            pieces.append(json.dumps(tools, sort_keys=True, separators=(",", ":")))
            pieces.append("\x1e")
        for message in messages:
            if not isinstance(message, dict):
                continue
            pieces.append(str(message.get("role", "")))
            pieces.append("\x1f")
            pieces.append(_content(message.get("content")))
            pieces.append("\x1e")
        return "".join(pieces).encode()
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt.encode()
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return array("I", prompt).tobytes()  # a prompt of token ids
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0].encode()  # a batch: the first prompt stands for it
    return b""


def salt_of(body: dict[str, Any]) -> bytes:
    """vLLM's cache_salt isolates caches between tenants: a salted prompt must not match an unsalted one
    (llm-d seeds the chain with it too)."""
    salt = body.get("cache_salt")
    return str(salt).encode() if salt else b""


def text_block_keys(data: bytes, block_bytes: int, max_blocks: int, salt: bytes = b"") -> list[int]:
    """Keys of data's full blocks of block_bytes bytes, at most max_blocks of them (a bound on the work per request).
    One running hash over the bytes: its digest after block i covers blocks 0..i, which is the chain, for the cost of
    one update and one copy per block."""
    running = blake2b(salt, digest_size=8, person=_PERSON)
    count = min(len(data) // block_bytes, max_blocks)
    keys = []
    view = memoryview(data)
    for i in range(count):
        running.update(view[i * block_bytes:(i + 1) * block_bytes])
        keys.append(_key(running.copy().digest()))
    return keys


def token_block_keys(tokens: Sequence[int], block_size: int, parent: int = ROOT, seed: bytes = b"",
                     max_blocks: int | None = None) -> list[int]:
    """Keys of the full blocks of block_size token ids, chained from parent: key = hash((parent, *tokens)). The same
    function keys the blocks a worker reports (kv_events.BlockStored carries their token ids) and a request's
    tokenized prompt, so the proxy never needs the engine's own block hash (vLLM's is sha256 over a pickled or CBOR
    tuple seeded by PYTHONHASHSEED; llm-d keeps its own request keys for the same reason: llm-d/llm-d-kv-cache
    pkg/kvevents/pool.go@7be76e11 maps engine keys to request keys).
    Python's hash of a tuple of ints is not salted (PYTHONHASHSEED salts str and bytes only) and is the same on every
    proxy running the same CPython; it is four times cheaper than a BLAKE2b per block, which matters at a few hundred
    blocks per request. A seed (LoRA name) enters as its own BLAKE2b digest, never as a str hash."""
    count = len(tokens) // block_size
    if max_blocks is not None:
        count = min(count, max_blocks)
    if seed:
        parent ^= _key(blake2b(seed, digest_size=8, person=_PERSON).digest())
    keys = []
    tokens = list(tokens)
    for i in range(count):
        parent = hash((parent, *tokens[i * block_size:(i + 1) * block_size])) & 0xFFFFFFFFFFFFFFFF
        keys.append(parent)
    return keys


def estimated_tokens(data: bytes) -> int:
    """A prompt's length in tokens when it is not tokenized (approximate mode)."""
    return len(data) // CHARS_PER_TOKEN


def first_key(keys: Iterable[int]) -> int:
    for key in keys:
        return key
    return ROOT
