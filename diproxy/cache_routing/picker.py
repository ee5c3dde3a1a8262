"""What the Router calls: a request's keys once, then a worker per role, the PD decision, and (approximate mode) the
choice recorded. Workers are named by address (host:port), so a Worker record replaced by the registry keeps its
cache history, and two proxies name the same worker alike.

    keys = picker.request_keys(body)                       # once per request
    decode = picker.pick("decode", decode_candidates, keys)  # decode first, as llm-d's PD handler
    alone = picker.decode_alone(keys, decode)                # the PD decider, on decode's cached prefix
    prefill = None if alone else picker.pick("prefill", prefill_candidates, keys)
    picker.record("decode", decode.worker, keys)             # approximate mode: what the worker will cache
    if prefill: picker.record("prefill", prefill.worker, keys)

Decode is chosen first because the PD decision depends on it (llm-d's disagg profile handler runs the decode profile
first, then the prefill decider on the chosen decode endpoint). In the precise mode record() does nothing: the
worker's own events will report what it cached."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol, Sequence

from diproxy.cache_routing.blocks import (CHARS_PER_TOKEN, ROOT, estimated_tokens, prompt_bytes, salt_of,
                                          text_block_keys)
from diproxy.cache_routing.choice import Choice, Knobs, choose
from diproxy.cache_routing.index import DEFAULT_CAPACITY, BlockIndex
from diproxy.cache_routing.pd_decider import PdDecider
from diproxy.cache_routing.precise import PreciseIndex
from diproxy.cache_routing.tokenizer import Tokenizer

APPROXIMATE = "approximate"
PRECISE = "precise"
MODES = (APPROXIMATE, PRECISE)
DEFAULT_BLOCK_BYTES = 256  # approximate mode: about 64 tokens per block at 4 characters a token
DEFAULT_MAX_BLOCKS = 256  # the most blocks hashed per request: a bound on the work per decision


class Candidate(Protocol):
    host: str
    port: int
    in_flight: int


@dataclass(frozen=True)
class RequestKeys:
    keys: list[int]
    prompt_tokens: int  # tokenized (precise) or estimated (approximate)
    block_tokens: int  # tokens per block

    @property
    def first(self) -> int:
        return self.keys[0] if self.keys else ROOT


def address(worker: Candidate) -> str:
    return f"{worker.host}:{worker.port}"


@dataclass
class PrefixPicker:
    mode: str = APPROXIMATE
    knobs: Knobs = field(default_factory=Knobs)
    decider: PdDecider = field(default_factory=PdDecider)
    block_bytes: int = DEFAULT_BLOCK_BYTES
    max_blocks: int = DEFAULT_MAX_BLOCKS
    capacity: int = DEFAULT_CAPACITY
    tokenizer: Tokenizer | None = None
    block_size: int | None = None  # precise mode: the engine's block size in tokens (else learnt from its events)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        # One index per role: a worker's cache is its own, and the roles' pools never share a worker.
        self.approximate = {role: BlockIndex(self.capacity) for role in ("prefill", "decode", "standalone")}
        self.precise = {role: PreciseIndex(self.capacity) for role in ("prefill", "decode", "standalone")}

    # -- keys ---------------------------------------------------------------------------------
    def request_keys(self, body: dict[str, Any]) -> RequestKeys:
        if self.mode == PRECISE:
            tokens = self.tokenizer.tokens(body) if self.tokenizer is not None else None
            size = self.block_size or next((i.block_size for i in self.precise.values() if i.block_size), None)
            if tokens is None or not size:
                data = prompt_bytes(body)
                return RequestKeys([], estimated_tokens(data), size or self.block_bytes // CHARS_PER_TOKEN)
            keys = self.precise["decode"].request_keys(tokens, size, max_blocks=self.max_blocks)
            return RequestKeys(keys, len(tokens), size)
        data = prompt_bytes(body)
        keys = text_block_keys(data, self.block_bytes, self.max_blocks, salt_of(body))
        return RequestKeys(keys, estimated_tokens(data), self.block_bytes // CHARS_PER_TOKEN)

    # -- choice -------------------------------------------------------------------------------
    def index(self, role: str) -> BlockIndex:
        return self.precise[role].index if self.mode == PRECISE else self.approximate[role]

    def pick(self, role: str, candidates: Sequence[Candidate], keys: RequestKeys,
             load: dict[Hashable, int] | None = None) -> Choice:
        """The candidate of role to send the request to. load: requests in flight per candidate (default: each
        candidate's in_flight)."""
        names = {w: address(w) for w in candidates}
        by_name = self.index(role).matched_blocks(keys.keys, list(names.values()))
        matched = {w: by_name[names[w]] for w in candidates}
        loads = load if load is not None else {w: w.in_flight for w in candidates}
        return choose(candidates, len(keys.keys), matched, loads, keys.first, names, self.knobs)

    def decode_alone(self, keys: RequestKeys, decode: Choice) -> bool:
        cached = decode.matched_blocks * keys.block_tokens
        return self.decider.decode_alone(keys.prompt_tokens, cached)

    def record(self, role: str, worker: Candidate, keys: RequestKeys) -> None:
        """Approximate mode: the worker will hold the request's blocks (llm-d records the chosen endpoint the same
        way, approximateprefix/plugin.go PreRequest)."""
        if self.mode == APPROXIMATE:
            self.approximate[role].add(address(worker), keys.keys)

    # -- events and membership ----------------------------------------------------------------
    def apply_events(self, role: str, worker_address: str, events: list) -> None:
        self.precise[role].apply(worker_address, events)

    def forget(self, role: str, worker_address: str) -> None:
        """A worker left the pool or restarted: its cache is gone."""
        self.approximate[role].drop_worker(worker_address)
        self.precise[role].drop_worker(worker_address)
