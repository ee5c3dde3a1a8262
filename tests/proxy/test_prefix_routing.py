"""The cache-aware choice's pure core: block keys, the bounded index, bounded load, deterministic choices."""

from __future__ import annotations

import gc
import random
import tracemalloc
from dataclasses import dataclass

import pytest

from diproxy.cache_routing.blocks import prompt_bytes, text_block_keys, token_block_keys
from diproxy.cache_routing.choice import Knobs, choose, load_cap
from diproxy.cache_routing.index import BYTES_PER_ENTRY, BlockIndex
from diproxy.cache_routing.picker import PrefixPicker


@dataclass(eq=False)
class W:
    host: str
    port: int
    in_flight: int = 0


def chat(system: str, *turns: str) -> dict:
    messages = [{"role": "system", "content": system}]
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return {"messages": messages}


# -- keys ---------------------------------------------------------------------------------------
def test_text_keys_are_chained_full_blocks_and_stable_across_processes():
    keys = text_block_keys(b"a" * 100, 32, 10)
    assert len(keys) == 3  # 100 bytes: three full blocks, the partial tail has no key
    assert len(set(keys)) == 3  # same bytes, different positions: different keys (the chain)
    # BLAKE2b, not hash(): the value is fixed whatever PYTHONHASHSEED is
    assert keys == text_block_keys(b"a" * 96, 32, 10)
    assert text_block_keys(b"b" + b"a" * 99, 32, 10)[2] != keys[2]  # a change in block 0 changes every later key


def test_chat_prefix_shared_by_turns_and_separated_from_other_systems():
    a1 = prompt_bytes(chat("S" * 600, "hi"))
    a2 = prompt_bytes(chat("S" * 600, "hi", "hello", "again"))
    b1 = prompt_bytes(chat("T" * 600, "hi"))
    k1, k2, kb = (text_block_keys(d, 64, 100) for d in (a1, a2, b1))
    assert k2[:len(k1)] == k1  # a later turn extends the earlier one's chain
    assert not set(kb) & set(k1)
    assert prompt_bytes({"messages": [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}]}) != \
        prompt_bytes({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}]})


def test_cache_salt_isolates():
    data = b"x" * 256
    assert text_block_keys(data, 64, 10, b"tenant-a") != text_block_keys(data, 64, 10)


def test_max_blocks_bounds_the_work():
    assert len(text_block_keys(b"z" * 10_000, 16, 8)) == 8
    assert len(token_block_keys(list(range(1000)), 16, max_blocks=5)) == 5


def test_token_keys_continue_from_a_parent():
    tokens = list(range(64))
    whole = token_block_keys(tokens, 16)
    assert token_block_keys(tokens[32:], 16, parent=whole[1]) == whole[2:]


# -- the index: bounded, evicted tail first ------------------------------------------------------
def test_capacity_bounds_each_worker_and_evicts_least_recent():
    index = BlockIndex(capacity=10)
    index.add("w", list(range(8)))
    index.add("w", list(range(100, 108)))
    assert index.size("w") == 10
    assert index.evictions == 6
    # the older chain lost its tail, not its head: its leading blocks still match
    assert index.matched_blocks(list(range(8)), ["w"]) == {"w": 2}
    assert index.matched_blocks(list(range(100, 108)), ["w"]) == {"w": 8}


def test_holders_are_forgotten_with_the_last_worker():
    index = BlockIndex(capacity=4)
    index.add("a", [1, 2])
    index.add("b", [1])
    index.remove("a", [1, 2])
    assert index.distinct_keys() == 1
    index.drop_worker("b")
    assert index.distinct_keys() == 0
    index.add("c", [5])  # the freed slot is reused
    assert index.matched_blocks([5], ["a", "b", "c"]) == {"a": 0, "b": 0, "c": 1}


def test_matched_blocks_is_the_leading_run_per_worker():
    index = BlockIndex()
    index.add("a", [1, 2, 3, 4])
    index.add("b", [1, 2])
    index.add("c", [2, 3])  # holds later blocks but not the first: no prefix
    assert index.matched_blocks([1, 2, 3, 4, 5], ["a", "b", "c", "d"]) == {"a": 4, "b": 2, "c": 0, "d": 0}
    assert index.matched_blocks([], ["a"]) == {"a": 0}


def test_memory_per_entry_is_bounded():
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = BlockIndex(capacity=20_000)
    rng = random.Random(1)
    for worker in range(4):
        for _ in range(200):
            index.add(f"w{worker}", [rng.getrandbits(64) for _ in range(100)])
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    entries = index.size()
    assert entries == 4 * 20_000
    assert used / entries < BYTES_PER_ENTRY, f"{used / entries:.0f} bytes per entry"


# -- bounded load ----------------------------------------------------------------------------------
def test_load_cap_is_one_plus_epsilon_of_fair_share():
    assert load_cap([0, 0, 0, 0], 0.25) == 1
    assert load_cap([4, 4, 4, 3], 0.25) == 5  # ceil(1.25 * 16 / 4)


def test_no_worker_goes_above_the_cap_even_holding_the_whole_prefix():
    workers = [W("10.0.0.1", 8000 + i) for i in range(4)]
    names = {w: f"{w.host}:{w.port}" for w in workers}
    load = {w: 0 for w in workers}
    hot = workers[0]
    for _ in range(400):
        matched = {w: (20 if w is hot else 0) for w in workers}
        choice = choose(workers, 20, matched, load, 7, names, Knobs(epsilon=0.25))
        assert load[choice.worker] + 1 <= load_cap(list(load.values()), 0.25)
        load[choice.worker] += 1
    mean = sum(load.values()) / 4
    assert max(load.values()) <= 1.25 * mean + 1
    assert load[hot] == max(load.values())  # the cache still wins up to the bound


def test_cached_prefix_wins_under_the_cap():
    workers = [W("h", 1), W("h", 2), W("h", 3)]
    names = {w: f"h:{w.port}" for w in workers}
    choice = choose(workers, 10, {workers[0]: 2, workers[1]: 9, workers[2]: 0}, {w: 1 for w in workers}, 1, names)
    assert choice.worker is workers[1] and choice.matched_blocks == 9 and not choice.capped


def test_load_weight_trades_cache_for_load():
    workers = [W("h", 1), W("h", 2)]
    names = {w: f"h:{w.port}" for w in workers}
    matched = {workers[0]: 5, workers[1]: 4}
    load = {workers[0]: 3, workers[1]: 0}
    assert choose(workers, 10, matched, load, 1, names, Knobs(epsilon=10)).worker is workers[0]
    assert choose(workers, 10, matched, load, 1, names, Knobs(epsilon=10, load_weight=1.0)).worker is workers[1]


# -- determinism --------------------------------------------------------------------------------------
def test_ties_do_not_depend_on_candidate_order_and_follow_the_first_block():
    workers = [W("10.0.0.1", 8000 + i) for i in range(8)]
    names = {w: f"{w.host}:{w.port}" for w in workers}
    zero = {w: 0 for w in workers}
    for first in range(50):
        picks = {choose(order, 4, zero, zero, first, names).worker
                 for order in (workers, workers[::-1], sorted(workers, key=lambda w: -w.port % 3))}
        assert len(picks) == 1
    spread = {choose(workers, 4, zero, zero, first, names).worker for first in range(200)}
    assert len(spread) == 8  # cold prefixes spread over every worker


def test_two_replicas_fed_the_same_choices_choose_alike():
    """Two proxies that see the same requests and the same loads keep identical indexes and pick the same workers,
    whatever order their registries list the workers in."""
    workers_a = [W("10.0.0.1", 8000 + i) for i in range(4)]
    workers_b = [W(w.host, w.port) for w in reversed(workers_a)]  # the other proxy's own Worker records
    one, two = PrefixPicker(), PrefixPicker()
    rng = random.Random(3)
    systems = ["system %d " % i * 80 for i in range(6)]
    for i in range(300):
        body = chat(rng.choice(systems), "question %d " % rng.randrange(20) * 10)
        for picker, workers in ((one, workers_a), (two, workers_b)):
            for w in workers:
                w.in_flight = (i * 7 + w.port) % 3  # the same loads on both proxies
        ka, kb = one.request_keys(body), two.request_keys(body)
        ca, cb = one.pick("prefill", workers_a, ka), two.pick("prefill", workers_b, kb)
        assert (ca.worker.host, ca.worker.port) == (cb.worker.host, cb.worker.port)
        one.record("prefill", ca.worker, ka)
        two.record("prefill", cb.worker, kb)


def test_picker_prefers_the_worker_that_served_the_conversation():
    workers = [W("10.0.0.1", 8000 + i) for i in range(4)]
    picker = PrefixPicker()
    first = chat("You are terse. " * 60, "hello there " * 20)
    keys = picker.request_keys(first)
    chosen = picker.pick("decode", workers, keys).worker
    picker.record("decode", chosen, keys)
    follow = chat("You are terse. " * 60, "hello there " * 20, "answer " * 20, "more " * 20)
    choice = picker.pick("decode", workers, picker.request_keys(follow))
    assert choice.worker is chosen and choice.matched_blocks == len(keys.keys)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        PrefixPicker(mode="magic")
