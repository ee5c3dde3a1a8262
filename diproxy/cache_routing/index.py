"""Which worker holds which block: per worker an LRU of block keys (bounded), and for every key the set of workers
holding it as a bitmask over worker slots (an int: matching a prefix is an AND per block).

Memory bound: at most `capacity` keys per worker, so at most workers x capacity entries. An entry costs one
OrderedDict slot and key int in the worker's LRU (about 100 bytes on CPython 3.11) plus, shared by the workers that
hold the key, one dict slot, key and mask int (about 100 bytes); tests/proxy/test_prefix_routing.py measures it with
tracemalloc and holds it under BYTES_PER_ENTRY. With the default 16384 keys per worker that is under 4 MiB per
worker.

Recency: a request's keys are touched tail first, so a prefix's first blocks are the most recent and a worker's LRU
evicts a chain from its tail, never leaving a tail without its head (vLLM frees a request's blocks tail first for the
same reason: vllm/v1/core/single_type_kv_cache_manager.py free, "Free blocks in reverse order so that the tail blocks
are freed first"). llm-d's approximate indexer (approximateprefix/indexer.go@520af478) keeps the same two maps, a
per-pod LRU and hash -> pods."""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Iterable, Sequence

DEFAULT_CAPACITY = 16384  # keys per worker
BYTES_PER_ENTRY = 256  # the measured upper bound per (worker, key) entry, see the module docstring


class BlockIndex:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._holders: dict[int, int] = {}  # key -> bitmask of worker slots
        self._lru: dict[Hashable, OrderedDict[int, None]] = {}  # worker -> its keys, least recent first
        self._slot: dict[Hashable, int] = {}  # worker -> slot (bit position)
        self._free_slots: list[int] = []
        self.evictions = 0

    # -- workers ------------------------------------------------------------------------------
    def _slot_of(self, worker: Hashable) -> int:
        slot = self._slot.get(worker)
        if slot is None:
            slot = self._free_slots.pop() if self._free_slots else len(self._slot)
            self._slot[worker] = slot
            self._lru[worker] = OrderedDict()
        return slot

    def workers(self) -> list[Hashable]:
        return list(self._slot)

    def drop_worker(self, worker: Hashable) -> None:
        """A worker left the pool (or restarted with an empty cache): forget its keys and free its slot."""
        self.clear(worker)
        slot = self._slot.pop(worker, None)
        if slot is not None:
            del self._lru[worker]
            self._free_slots.append(slot)

    def clear(self, worker: Hashable) -> None:
        lru = self._lru.get(worker)
        if not lru:
            return
        bit = 1 << self._slot[worker]
        holders = self._holders
        for key in lru:
            mask = holders[key] & ~bit
            if mask:
                holders[key] = mask
            else:
                del holders[key]
        lru.clear()

    # -- keys ---------------------------------------------------------------------------------
    def add(self, worker: Hashable, keys: Sequence[int]) -> None:
        """The worker holds keys (a prefix in order: keys[0] is the first block). Touched tail first."""
        if not keys:
            return
        bit = 1 << self._slot_of(worker)
        lru = self._lru[worker]
        holders = self._holders
        for key in reversed(keys):
            if key in lru:
                lru.move_to_end(key)
            else:
                lru[key] = None
                holders[key] = holders.get(key, 0) | bit
        while len(lru) > self.capacity:
            old, _ = lru.popitem(last=False)
            self.evictions += 1
            mask = holders[old] & ~bit
            if mask:
                holders[old] = mask
            else:
                del holders[old]

    def remove(self, worker: Hashable, keys: Iterable[int]) -> None:
        lru = self._lru.get(worker)
        if lru is None:
            return
        bit = 1 << self._slot[worker]
        holders = self._holders
        for key in keys:
            if lru.pop(key, 0) is None:  # present (its value is None)
                mask = holders[key] & ~bit
                if mask:
                    holders[key] = mask
                else:
                    del holders[key]

    def holds(self, worker: Hashable, key: int) -> bool:
        lru = self._lru.get(worker)
        return lru is not None and key in lru

    def size(self, worker: Hashable | None = None) -> int:
        if worker is None:
            return sum(len(lru) for lru in self._lru.values())
        lru = self._lru.get(worker)
        return len(lru) if lru is not None else 0

    def distinct_keys(self) -> int:
        return len(self._holders)

    # -- matching -----------------------------------------------------------------------------
    def matched_blocks(self, keys: Sequence[int], candidates: Sequence[Hashable]) -> dict[Hashable, int]:
        """For each candidate, how many of keys' leading blocks it holds (its cached prefix, in blocks). Walks the
        chain once, ANDing the holders' masks, and stops at the first block no candidate holds: O(prefix) dict
        lookups whatever the index's size."""
        slots = self._slot
        wanted = 0
        for worker in candidates:
            slot = slots.get(worker)
            if slot is not None:
                wanted |= 1 << slot
        result = dict.fromkeys(candidates, 0)
        if not wanted:
            return result
        holders = self._holders
        alive = wanted
        depth = 0
        for depth, key in enumerate(keys):
            still = alive & holders.get(key, 0)
            if still != alive:
                self._settle(result, candidates, alive & ~still, depth)
                alive = still
                if not alive:
                    return result
        else:
            depth = len(keys)
        self._settle(result, candidates, alive, depth)
        return result

    def _settle(self, result: dict[Hashable, int], candidates: Sequence[Hashable], mask: int, depth: int) -> None:
        slots = self._slot
        for worker in candidates:
            slot = slots.get(worker)
            if slot is not None and mask >> slot & 1:
                result[worker] = depth
