"""The precise mode: each worker's blocks as its own KV events report them, and a request's blocks from its tokens.

Event side: a BlockStored carries each block's token ids, so the proxy keys the blocks with its own chained hash
(blocks.token_block_keys), continuing from the key it gave the parent block; it keeps engine hash -> key per worker
so that a BlockRemoved (engine hashes only) finds what to remove. This is llm-d's design (llm-d/llm-d-kv-cache
pkg/kvevents/pool.go@7be76e11: engine keys mapped to request keys, the parent's request key looked up to continue
the chain) and spares the proxy vLLM's hash function and its PYTHONHASHSEED.
A block whose parent the proxy never saw (it subscribed late, or missed a batch) cannot be keyed: it is skipped and
counted (orphans), so the index under-estimates rather than invents hits.
Only device blocks count: medium None or "GPU" (vLLM's MEDIUM_GPU; what a Neuron build reports is unverified, so
`mediums` is a knob), and only KV cache group 0 (hybrid models report one chain per group).

Request side: tokens come from an injected Tokenizer (tokenizer.Tokenizer); with none, or one that cannot render
the request, the request has no keys and the choice falls back to load and the rendezvous tie-break."""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Iterable

from diproxy.cache_routing.blocks import ROOT, token_block_keys
from diproxy.cache_routing.index import DEFAULT_CAPACITY, BlockIndex
from diproxy.cache_routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, Event

DEVICE_MEDIUMS = frozenset({None, "GPU"})


class PreciseIndex:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, mediums: Iterable[str | None] = DEVICE_MEDIUMS) -> None:
        self.index = BlockIndex(capacity)
        self.mediums = frozenset(mediums)
        # worker -> engine hash -> our key; bounded like the index (a worker that never sends BlockRemoved, or whose
        # removals were lost, cannot grow it past capacity).
        self._engine: dict[Hashable, OrderedDict[object, int]] = {}
        self.block_size: int | None = None  # learnt from the first BlockStored
        self.orphans = 0
        self.stored = 0
        self.removed = 0

    def apply(self, worker: Hashable, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, BlockStored):
                self._stored(worker, event)
            elif isinstance(event, BlockRemoved):
                self._removed(worker, event)
            elif isinstance(event, AllBlocksCleared):
                self.clear(worker)

    def clear(self, worker: Hashable) -> None:
        """The worker's cache is empty (AllBlocksCleared), or the proxy's view of it has holes (a sequence gap)."""
        self.index.clear(worker)
        self._engine.pop(worker, None)

    def drop_worker(self, worker: Hashable) -> None:
        self.index.drop_worker(worker)
        self._engine.pop(worker, None)

    def _mapping(self, worker: Hashable) -> OrderedDict[object, int]:
        mapping = self._engine.get(worker)
        if mapping is None:
            mapping = self._engine[worker] = OrderedDict()
        return mapping

    def _stored(self, worker: Hashable, event: BlockStored) -> None:
        if event.medium not in self.mediums or (event.group_idx or 0) != 0:
            return
        mapping = self._mapping(worker)
        if event.parent_block_hash is None:
            parent = ROOT
        else:
            known = mapping.get(_hashable(event.parent_block_hash))
            if known is None:
                self.orphans += len(event.block_hashes)
                return
            parent = known
        self.block_size = event.block_size
        seed = event.lora_name.encode() if event.lora_name else b""
        keys = token_block_keys(event.token_ids, event.block_size, parent, seed)
        # One key per full block; vLLM reports full blocks only, so the counts agree.
        for engine_hash, key in zip(event.block_hashes, keys):
            mapping[_hashable(engine_hash)] = key
            mapping.move_to_end(_hashable(engine_hash))
        while len(mapping) > self.index.capacity:
            mapping.popitem(last=False)
        self.index.add(worker, keys)
        self.stored += len(keys)

    def _removed(self, worker: Hashable, event: BlockRemoved) -> None:
        if event.medium not in self.mediums or (event.group_idx or 0) != 0:
            return
        mapping = self._engine.get(worker)
        if mapping is None:
            return
        keys = [key for key in (mapping.pop(_hashable(h), None) for h in event.block_hashes) if key is not None]
        self.index.remove(worker, keys)
        self.removed += len(keys)

    def request_keys(self, tokens: list[int], block_size: int | None = None, lora_name: str | None = None,
                     max_blocks: int | None = None) -> list[int]:
        size = block_size or self.block_size
        if not size:
            return []
        return token_block_keys(tokens, size, ROOT, lora_name.encode() if lora_name else b"", max_blocks)


def _hashable(block_hash: object) -> object:
    # msgpack bin decodes to bytes (hashable); a list would come from a malformed publisher
    return tuple(block_hash) if isinstance(block_hash, list) else block_hash
