"""A worker's prefix cache as the fake workers and bench/routing.py model it: an LRU over full blocks of tokens,
looked up from the first block to the first miss (vLLM's KVCacheManager.get_computed_blocks), blocks touched tail
first so that eviction takes a chain's tail before its head, and the KV events vLLM would publish for each change.

ToyTokenizer stands for the model's tokenizer on both sides of a loopback test: one token per 4 bytes of the prompt
as diproxy.cache_routing.blocks.prompt_bytes renders it (so the approximate mode's 4-characters-a-token estimate is
exact here). The engine-side block hash is deliberately not the proxy's (sha256, as vLLM's default
prefix_caching_hash_algo): the precise mode must work from the events' token ids alone."""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import Any

from diproxy.cache_routing.blocks import prompt_bytes
from diproxy.cache_routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, Event


class ToyTokenizer:
    def tokens(self, body: dict[str, Any]) -> list[int] | None:
        data = prompt_bytes(body)
        data += b"\0" * (-len(data) % 4)
        return list(array("I", data))


def engine_hash(parent: int | None, tokens: list[int]) -> int:
    h = hashlib.sha256((parent or 0).to_bytes(8, "little") + array("I", tokens).tobytes())
    return int.from_bytes(h.digest()[:8], "big")


class PrefixCacheModel:
    def __init__(self, capacity_blocks: int, block_size: int = 16) -> None:
        self.capacity = capacity_blocks
        self.block_size = block_size
        self._blocks: OrderedDict[int, None] = OrderedDict()  # engine hash, least recent first

    def __len__(self) -> int:
        return len(self._blocks)

    def chain(self, tokens: list[int]) -> list[tuple[int, int | None, list[int]]]:
        """(hash, parent hash, tokens) of each full block."""
        out = []
        parent: int | None = None
        size = self.block_size
        for i in range(len(tokens) // size):
            block = tokens[i * size:(i + 1) * size]
            h = engine_hash(parent, block)
            out.append((h, parent, block))
            parent = h
        return out

    def cached_blocks(self, tokens: list[int]) -> int:
        count = 0
        for h, _, _ in self.chain(tokens):
            if h not in self._blocks:
                break
            count += 1
        return count

    def store(self, tokens: list[int]) -> list[Event]:
        """The prompt's blocks are now cached; returns the KV events this caused (new runs stored, evictions)."""
        events: list[Event] = []
        chain = self.chain(tokens)
        run: list[tuple[int, int | None, list[int]]] = []
        for link in chain:
            if link[0] in self._blocks:
                if run:
                    events.append(_stored(run, self.block_size))
                    run = []
            else:
                run.append(link)
        if run:
            events.append(_stored(run, self.block_size))
        for h, _, _ in reversed(chain):
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        evicted = []
        while len(self._blocks) > self.capacity:
            evicted.append(self._blocks.popitem(last=False)[0])
        if evicted:
            events.append(BlockRemoved(evicted, "GPU"))
        return events

    def clear(self) -> list[Event]:
        self._blocks.clear()
        return [AllBlocksCleared()]


def _stored(run: list[tuple[int, int | None, list[int]]], block_size: int) -> BlockStored:
    tokens = [t for _, _, block in run for t in block]
    # vLLM's BlockStored: lora_id and medium are always sent (None, and "GPU" for device blocks).
    return BlockStored([h for h, _, _ in run], run[0][1], tokens, block_size, None, "GPU")
