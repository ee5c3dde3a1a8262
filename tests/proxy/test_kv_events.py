"""vLLM KV events: decoded from both layouts vLLM has published, fed to the precise index, and received over ZMQ
from a fake worker on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import zmq.asyncio

from diproxy.cache_routing.kv_events import (AllBlocksCleared, BlockRemoved, BlockStored, EventFormatError,
                                             Subscriber, decode_batch)
from diproxy.cache_routing.picker import PRECISE, PrefixPicker
from diproxy.cache_routing.precise import PreciseIndex
from diproxy.testing.cache_model import PrefixCacheModel, ToyTokenizer
from diproxy.testing.fake_worker import Behaviour, FakeWorker


# Copies of vLLM's declarations (vllm/distributed/kv_events.py): the array_like layout (@b4e69e0a, what llm-d's
# Go adapter decodes) and the map layout (@0181ea31, the Structs declared without array_like), with the fields of
# the newer release (medium, lora_name, extra_keys, group_idx, ...).
def vllm_classes(array_like: bool) -> tuple[Any, Any, Any, Any]:
    opts = {"omit_defaults": True, "gc": False}
    if array_like:
        opts["array_like"] = True

    class KVCacheEvent(msgspec.Struct, tag=True, **opts):
        pass

    class BlockStored(KVCacheEvent):
        block_hashes: list[bytes | int]
        parent_block_hash: bytes | int | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None
        medium: str | None
        lora_name: str | None
        extra_keys: list[Any] | None = None
        group_idx: int | None = None
        kv_cache_spec_kind: str | None = None
        kv_cache_spec_sliding_window: int | None = None

    class BlockRemoved(KVCacheEvent):
        block_hashes: list[bytes | int]
        medium: str | None
        group_idx: int | None = None

    class AllBlocksCleared(KVCacheEvent):
        pass

    class KVEventBatch(msgspec.Struct, **opts):
        ts: float
        events: list[BlockStored | BlockRemoved | AllBlocksCleared]
        data_parallel_rank: int | None = None

    return KVEventBatch, BlockStored, BlockRemoved, AllBlocksCleared


@pytest.mark.parametrize("array_like", [True, False], ids=["array_like", "map"])
def test_decodes_vllm_batches_in_both_layouts(array_like):
    Batch, Stored, Removed, Cleared = vllm_classes(array_like)
    h1, h2 = b"\x01" * 32, b"\x02" * 32  # ExternalBlockHash: sha256 digests in newer releases
    payload = msgspec.msgpack.encode(Batch(12.5, [
        Stored([h1, h2], None, list(range(32)), 16, None, "GPU", None, group_idx=0),
        Removed([h1], "GPU"),
        Cleared(),
    ], data_parallel_rank=0))
    ts, events, rank = decode_batch(payload)
    assert ts == 12.5 and rank == 0
    stored, removed, cleared = events
    assert isinstance(stored, BlockStored) and stored.block_hashes == [h1, h2] and stored.parent_block_hash is None
    assert stored.token_ids == list(range(32)) and stored.block_size == 16 and stored.medium == "GPU"
    assert isinstance(removed, BlockRemoved) and removed.block_hashes == [h1]
    assert isinstance(cleared, AllBlocksCleared)


def test_decodes_the_oldest_layout_with_int_hashes_and_fewer_fields():
    # vllm kv_events.py@b4e69e0a: BlockStored(block_hashes, parent_block_hash, token_ids, block_size, lora_id)
    payload = msgspec.msgpack.encode([1.0, [["BlockStored", [7, 8], 6, list(range(8)), 4, None],
                                            ["BlockRemoved", [7]]]])
    _, (stored, removed), rank = decode_batch(payload)
    assert stored.block_hashes == [7, 8] and stored.parent_block_hash == 6 and stored.medium is None
    assert removed.block_hashes == [7] and rank is None


def test_unknown_events_are_skipped_and_garbage_is_refused():
    _, events, _ = decode_batch(msgspec.msgpack.encode([0.0, [["BlockMoved", 1], ["AllBlocksCleared"]]]))
    assert len(events) == 1 and isinstance(events[0], AllBlocksCleared)
    for bad in (b"\xc1", msgspec.msgpack.encode(3), msgspec.msgpack.encode([0.0, 5]),
                msgspec.msgpack.encode([0.0, [["BlockStored", [1]]]])):
        with pytest.raises(EventFormatError):
            decode_batch(bad)


# -- the precise index ----------------------------------------------------------------------------
def events_of(model: PrefixCacheModel, body: dict) -> list:
    return model.store(ToyTokenizer().tokens(body))


def test_precise_index_matches_requests_to_what_workers_reported():
    model, index = PrefixCacheModel(1000, 16), PreciseIndex()
    body = {"prompt": "x" * 64 * 10}  # 10 blocks of 16 toy tokens
    index.apply("w", events_of(model, body))
    keys = index.request_keys(ToyTokenizer().tokens({"prompt": "x" * 64 * 10 + "y" * 64}))
    assert len(keys) == 11
    assert index.index.matched_blocks(keys, ["w", "v"]) == {"w": 10, "v": 0}
    # a later store continues the chain from the parent the worker named
    longer = {"prompt": "x" * 64 * 10 + "z" * 64 * 3}
    stored = events_of(model, longer)
    assert stored[0].parent_block_hash is not None and len(stored[0].block_hashes) == 3
    index.apply("w", stored)
    assert index.index.matched_blocks(index.request_keys(ToyTokenizer().tokens(longer)), ["w"]) == {"w": 13}


def test_removed_and_cleared_shrink_the_view_and_orphans_are_skipped():
    model, index = PrefixCacheModel(8, 16), PreciseIndex()
    first = {"prompt": "a" * 64 * 6}
    index.apply("w", events_of(model, first))
    index.apply("w", events_of(model, {"prompt": "b" * 64 * 6}))  # evicts 4 of the first chain's blocks
    keys = index.request_keys(ToyTokenizer().tokens(first))
    assert index.index.matched_blocks(keys, ["w"]) == {"w": 2}
    assert index.index.size("w") == 8
    index.apply("w", [AllBlocksCleared()])
    assert index.index.size("w") == 0
    index.apply("w", [BlockStored([99], 12345, list(range(16)), 16)])  # parent never seen
    assert index.orphans == 1 and index.index.size("w") == 0


def test_non_device_tiers_and_other_groups_are_ignored():
    index = PreciseIndex()
    index.apply("w", [BlockStored([1], None, list(range(16)), 16, medium="CPU"),
                      BlockStored([2], None, list(range(16)), 16, group_idx=1)])
    assert index.index.size("w") == 0


def test_sequence_gap_clears_the_worker():
    index = PreciseIndex()
    cleared = []
    sub = Subscriber("tcp://unused:1", "w", index.apply, on_gap=lambda w: (cleared.append(w), index.clear(w)))
    model = PrefixCacheModel(100, 16)
    payload = msgspec.msgpack.encode([0.0, events_of(model, {"prompt": "q" * 64 * 2})])
    sub.receive([b"kv", (0).to_bytes(8, "big"), payload])
    assert index.index.size("w") == 2
    sub.receive([b"kv", (2).to_bytes(8, "big"), msgspec.msgpack.encode([0.0, []])])  # seq 1 was lost
    assert sub.gaps == 1 and cleared == ["w"] and index.index.size("w") == 0
    sub.receive([b"kv", b"x"])
    assert sub.errors == 1


# -- loopback: a fake worker publishing over ZMQ ---------------------------------------------------
def test_precise_mode_over_zmq_from_a_fake_worker():
    async def scenario() -> None:
        worker = FakeWorker("decode", behaviour=Behaviour(tokens=1, prefix_cache_blocks=500, kv_events=True))
        await worker.start(register=False)
        picker = PrefixPicker(mode=PRECISE, tokenizer=ToyTokenizer(), block_size=16)
        context = zmq.asyncio.Context()
        address = f"{worker.host}:{worker.port}"
        sub = Subscriber(worker.kv_events_endpoint, address,
                         lambda w, events: picker.apply_events("decode", w, events), context=context)
        sub.start()
        try:
            import aiohttp
            body = {"model": "fake-model", "messages": [{"role": "system", "content": "rules " * 200},
                                                        {"role": "user", "content": "hi"}], "max_tokens": 1}
            async with aiohttp.ClientSession() as client:
                # ZMQ drops what a SUB receives before its subscription reaches the PUB: repeat until one lands.
                for _ in range(100):
                    async with client.post(f"http://{address}/v1/chat/completions", json=body) as response:
                        assert response.status == 200
                    if sub.batches:
                        break
                    worker.cache.clear()
                    await asyncio.sleep(0.02)
            for _ in range(100):
                if picker.precise["decode"].index.size(address):
                    break
                await asyncio.sleep(0.01)
            keys = picker.request_keys(body)
            assert keys.keys
            other = FakeWorker("decode", port=1)
            choice = picker.pick("decode", [other, worker], keys)
            assert choice.worker is worker and choice.matched_blocks == len(keys.keys)
        finally:
            await sub.stop()
            context.term()
            await worker.stop()

    asyncio.run(asyncio.wait_for(scenario(), 20))
