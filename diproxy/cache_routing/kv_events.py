"""vLLM's KV cache events, as `--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
"endpoint": "tcp://*:5557", "topic": "kv@<ip>@<model>"}'` publishes them, decoded with msgspec; and a ZMQ SUB
subscriber that feeds them to a precise.PreciseIndex.

Wire format (vllm-project/vllm vllm/distributed/kv_events.py, ZmqEventPublisher._publisher_thread): one ZMQ
multipart message per batch, (topic, 8-byte big-endian sequence number, msgpack payload), the payload a KVEventBatch
(ts, events, data_parallel_rank) whose events are tagged unions of
  BlockStored(block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name, extra_keys,
              group_idx, kv_cache_spec_kind, kv_cache_spec_sliding_window)
  BlockRemoved(block_hashes, medium, group_idx)
  AllBlocksCleared()
Releases have encoded these Structs two ways, both decoded here:
- array_like=True (vllm kv_events.py@b4e69e0a, and what llm-d/llm-d-kv-cache pkg/kvevents/engineadapter/
  vllm_adapter.go@7be76e11 decodes): the batch is [ts, [event...], dp_rank?] and an event is [tag, field...] with
  the fields in declaration order, trailing defaults omitted;
- as maps (vllm kv_events.py@0181ea31 declares the Structs without array_like): {"ts":..., "events": [{"type":
  tag, field: value...}]}.
Block hashes are ints in older releases and bytes (ExternalBlockHash) in newer ones; both are kept as given, since
they are only ever compared with hashes from the same worker. Later fields are optional so that older publishers,
which send fewer, decode too.

vLLM also offers a ROUTER replay socket for missed batches (replay_endpoint); this subscriber does not use it: a gap in
the sequence numbers is counted (Subscriber.gaps) and the worker's index is cleared, so the proxy under-estimates
that worker's cache until its next events instead of trusting a view with holes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Union

import msgspec
import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

BlockHash = Union[int, bytes]


# -- the publisher's Structs (array_like, as vLLM's kv_events.py@b4e69e0a) ----------------------------------------
# Used to encode in diproxy/testing/fake_worker.py exactly what vLLM sends; decoding goes through decode_batch, which
# accepts both layouts.
class _Event(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(_Event):
    block_hashes: list[BlockHash]
    parent_block_hash: BlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None


class BlockRemoved(_Event):
    block_hashes: list[BlockHash]
    medium: str | None = None
    group_idx: int | None = None


class AllBlocksCleared(_Event):
    pass


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Union[BlockStored, BlockRemoved, AllBlocksCleared]]
    data_parallel_rank: int | None = None


Event = Union[BlockStored, BlockRemoved, AllBlocksCleared]

_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name",
                  "extra_keys", "group_idx")
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")
_decoder = msgspec.msgpack.Decoder()  # untyped: lists and dicts, whichever layout the publisher used
_encoder = msgspec.msgpack.Encoder()


class EventFormatError(ValueError):
    """A payload that is not a vLLM KV event batch."""


def encode_batch(events: list[Event], ts: float = 0.0, data_parallel_rank: int | None = None) -> bytes:
    return _encoder.encode(KVEventBatch(ts, events, data_parallel_rank))


def _fields(raw: Any, names: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return {name: raw.get(name) for name in names}
    return {name: raw[i + 1] if i + 1 < len(raw) else None for i, name in enumerate(names)}


def _event(raw: Any) -> Event | None:
    if isinstance(raw, dict):
        tag = raw.get("type")
    elif isinstance(raw, list) and raw:
        tag = raw[0]
    else:
        raise EventFormatError(f"an event is neither a tagged array nor a map: {type(raw).__name__}")
    if tag == "BlockStored":
        f = _fields(raw, _STORED_FIELDS)
        if not isinstance(f["block_hashes"], list) or not isinstance(f["token_ids"], list) \
                or not isinstance(f["block_size"], int) or f["block_size"] <= 0:
            raise EventFormatError("BlockStored lacks block_hashes, token_ids or block_size")
        return BlockStored(f["block_hashes"], f["parent_block_hash"], f["token_ids"], f["block_size"], f["lora_id"],
                           f["medium"], f["lora_name"], f["extra_keys"], f["group_idx"])
    if tag == "BlockRemoved":
        f = _fields(raw, _REMOVED_FIELDS)
        if not isinstance(f["block_hashes"], list):
            raise EventFormatError("BlockRemoved lacks block_hashes")
        return BlockRemoved(f["block_hashes"], f["medium"], f["group_idx"])
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None  # an event kind this proxy does not know (a newer vLLM): skipped, not an error


def decode_batch(payload: bytes) -> tuple[float, list[Event], int | None]:
    """(ts, events, data_parallel_rank) of one batch, in either layout; unknown event kinds are skipped."""
    try:
        raw = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise EventFormatError(f"not msgpack: {exc}") from exc
    if isinstance(raw, dict):
        ts, events, rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list) and len(raw) >= 2:
        ts, events, rank = raw[0], raw[1], raw[2] if len(raw) > 2 else None
    else:
        raise EventFormatError("a batch is neither [ts, events, ...] nor a map")
    if not isinstance(events, list):
        raise EventFormatError("a batch's events are not a list")
    decoded = [event for event in map(_event, events) if event is not None]
    return float(ts or 0.0), decoded, rank


def sequence_number(frame: bytes) -> int:
    return int.from_bytes(frame, "big", signed=True)


@dataclass
class Subscriber:
    """A SUB socket on one worker's publisher; each batch goes to apply(worker, events). Started by the proxy for
    every worker that announces an events endpoint (the wiring is the Router's), stopped when the worker leaves."""

    endpoint: str  # tcp://host:port of the worker's PUB socket
    worker: Hashable
    apply: Callable[[Hashable, list[Event]], None]
    on_gap: Callable[[Hashable], None] | None = None  # sequence numbers skipped: the view has holes
    topic: bytes = b""
    context: zmq.asyncio.Context | None = None
    batches: int = 0
    gaps: int = 0
    errors: int = 0
    last_seq: int | None = None
    _task: asyncio.Task | None = field(default=None, repr=False)
    _socket: zmq.asyncio.Socket | None = field(default=None, repr=False)

    def start(self) -> None:
        context = self.context or zmq.asyncio.Context.instance()
        self._socket = context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, self.topic)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(self.endpoint)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def receive(self, frames: list[bytes]) -> None:
        """One multipart message: (topic, seq, payload). Public so tests can feed frames without a socket."""
        if len(frames) != 3:
            self.errors += 1
            return
        seq = sequence_number(frames[1])
        if self.last_seq is not None and seq != self.last_seq + 1:
            self.gaps += 1
            if self.on_gap is not None:
                self.on_gap(self.worker)
        self.last_seq = seq
        try:
            _, events, _ = decode_batch(frames[2])
        except EventFormatError as exc:
            self.errors += 1
            log.warning("KV events from %s: %s", self.endpoint, exc)
            return
        self.batches += 1
        self.apply(self.worker, events)

    async def _run(self) -> None:
        assert self._socket is not None
        while True:
            self.receive(await self._socket.recv_multipart())
