"""Cache-aware routing against blind routing, in an in-process simulation of a DI fleet (seconds of wall time).

The routing core under test is the proxy's own (diproxy/cache_routing/: the same PrefixPicker the Router will call);
the workers are the fake workers' cache model (diproxy/testing/cache_model.py: an LRU over 16-token blocks, lookup
to the first miss, KV events as vLLM publishes them) driven by a discrete-event clock instead of real sleeps:
- a prefill worker serves one prefill at a time, FIFO: --hop-overhead plus --prefill-per-block per block it lacks;
- a decode worker pulls, per request, only the blocks it lacks from the prefill (--pull-per-block each, vLLM's
  NixlConnector: nixl/scheduler.py@053da34b get_num_new_matched_tokens), then answers; a request the PD decider
  keeps on decode is prefilled there, FIFO on the decode worker's prefill lane, at --prefill-per-block per block
  lacking. Decode steps are --token-time apart and never queue (continuous batching); ITL is not modelled, so a
  decode-alone prefill's cost to other streams does not show here.
- precise mode gets each worker's KV events as they happen (no event lag); approximate mode records its own
  choices; the oracle reads every worker's true cache and uses the same bounded-load choice.

Workload: multi-turn chats. --systems shared system prompts (1.5k-3k tokens); conversations start as a Poisson
process of --rate per second, each 2 to 8 turns; every turn adds a user message (50-300 tokens) and the previous
answer (100-300 tokens) to the history. The trace (arrival times and bodies) is generated once from --seed and
replayed for every policy: equal offered load.

Reported per policy, without and with the PD decider (Dynamo's default bounds): TTFT p50/p99, throughput (requests
finished per second over the run), the prefix hit rate (prompt tokens found cached where they would be computed)
and its ratio to the oracle's, blocks pulled per request, the share served on decode alone, and the per-worker load
spread (requests served by the busiest worker over the mean, per role). Then the decision's cost: hashing a request
and choosing a worker, in microseconds, with 10k prefixes tracked.

Figures depend on the machine (the decision's cost) and on the cost model above (everything else): they compare
policies under one model, they are not a forecast of a real fleet's latency."""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from diproxy.cache_routing.choice import Knobs, choose  # noqa: E402
from diproxy.cache_routing.pd_decider import PdDecider  # noqa: E402
from diproxy.cache_routing.picker import APPROXIMATE, PRECISE, PrefixPicker, RequestKeys  # noqa: E402
from diproxy.testing.cache_model import PrefixCacheModel, ToyTokenizer  # noqa: E402

BLOCK = 16  # tokens per engine block (and per toy block)
WORDS = ("the", "model", "serves", "requests", "with", "cached", "prefix", "blocks", "and", "decode", "prefill",
         "routing", "worker", "fleet", "token", "stream", "latency", "cost", "shared", "system")


# -- workload ------------------------------------------------------------------------------------------
def text(rng: random.Random, tokens: int) -> str:
    # ToyTokenizer: one token per 4 bytes, so `tokens` tokens are 4 x tokens characters
    out, size = [], 0
    while size < tokens * 4:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:tokens * 4]


@dataclass
class Request:
    at: float
    body: dict[str, Any]
    output_tokens: int
    tokens: list[int] = field(default_factory=list)


def trace(seed: int, rate: float, conversations: int, systems: int) -> list[Request]:
    rng = random.Random(seed)
    prompts = [text(rng, rng.randint(1500, 3000)) for _ in range(systems)]
    out: list[Request] = []
    start = 0.0
    for _ in range(conversations):
        start += rng.expovariate(rate)
        messages = [{"role": "system", "content": rng.choice(prompts)}]
        at = start
        for turn in range(rng.randint(2, 8)):
            messages.append({"role": "user", "content": text(rng, rng.randint(50, 300))})
            answer = rng.randint(100, 300)
            out.append(Request(at, {"model": "m", "messages": list(messages)}, answer))
            messages.append({"role": "assistant", "content": text(rng, answer)})
            at += rng.uniform(4.0, 12.0)  # the answer streams, the user reads and types
    out.sort(key=lambda r: r.at)
    tokenizer = ToyTokenizer()
    for r in out:
        r.tokens = tokenizer.tokens(r.body) or []
    return out


# -- fleet ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Worker:
    host: str
    port: int
    role: str
    cache: PrefixCacheModel
    in_flight: int = 0
    busy_until: float = 0.0  # FIFO prefill lane
    served: int = 0


@dataclass
class Costs:
    prefill_per_block: float
    pull_per_block: float
    hop_overhead: float
    first_token: float
    token_time: float


@dataclass
class Result:
    name: str
    ttft: list[float]
    finished: float
    hit_tokens: int
    prompt_tokens: int
    pulled_blocks: int
    alone: int
    requests: int
    spread_prefill: float
    spread_decode: float
    route_cpu_us: float


class Sim:
    def __init__(self, policy: str, decider: bool, costs: Costs, prefill: int, decode: int, capacity: int,
                 seed: int, knobs: Knobs) -> None:
        self.policy, self.costs, self.knobs = policy, costs, knobs
        self.prefill = [Worker("10.0.1.%d" % i, 8000, "prefill", PrefixCacheModel(capacity, BLOCK))
                        for i in range(prefill)]
        self.decode = [Worker("10.0.2.%d" % i, 8000, "decode", PrefixCacheModel(capacity, BLOCK))
                       for i in range(decode)]
        self.decider = PdDecider(enabled=decider)
        self.rng = random.Random(seed)
        mode = PRECISE if policy == "precise" else APPROXIMATE
        # The approximate index must believe no more than a worker can hold: its capacity is the worker's cache in
        # its own (coarser) blocks, as llm-d sizes its LRU from the pod's GPU blocks (approximateprefix autoTune).
        # The precise index follows the worker's events, so any bound above the cache's size is exact.
        approx_capacity = max(1, capacity * BLOCK * 4 // 256)
        self.picker = PrefixPicker(mode=mode, knobs=knobs, decider=self.decider, tokenizer=ToyTokenizer(),
                                   block_size=BLOCK, capacity=approx_capacity if mode == APPROXIMATE else capacity * 2)
        self.clock: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = 0
        self.ttft: list[float] = []
        self.hit_tokens = self.prompt_tokens = self.pulled = self.alone = 0
        self.last = 0.0
        self.route_cpu = 0.0

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self.seq += 1
        heapq.heappush(self.clock, (t, self.seq, fn))

    def store(self, worker: Worker, tokens: list[int]) -> None:
        events = worker.cache.store(tokens)
        if self.policy == "precise":
            self.picker.apply_events(worker.role, f"{worker.host}:{worker.port}", events)

    # -- choice per policy -----------------------------------------------------------------------
    def blind(self, pool: list[Worker]) -> Worker:
        # today's LeastInFlight (diproxy/workers.py): power of two choices on requests in flight
        a, b = self.rng.sample(pool, 2) if len(pool) > 1 else (pool[0], pool[0])
        return a if a.in_flight <= b.in_flight else b

    def oracle(self, pool: list[Worker], r: Request) -> tuple[Worker, int]:
        matched = {w: w.cache.cached_blocks(r.tokens) for w in pool}
        names = {w: w.host for w in pool}
        choice = choose(pool, len(r.tokens) // BLOCK, matched, {w: w.in_flight for w in pool},
                        zlib.crc32(r.body["messages"][0]["content"].encode()), names, self.knobs)
        return choice.worker, choice.matched_blocks * BLOCK

    def route(self, r: Request) -> tuple[Worker | None, Worker, bool]:
        """(prefill or None, decode, decode_alone)."""
        start = time.process_time()
        try:
            if self.policy == "blind":
                return self.blind(self.prefill), self.blind(self.decode), False
            if self.policy == "oracle":
                d, cached = self.oracle(self.decode, r)
                if self.decider.decode_alone(len(r.tokens), cached):
                    return None, d, True
                return self.oracle(self.prefill, r)[0], d, False
            keys = self.picker.request_keys(r.body)
            dc = self.picker.pick("decode", self.decode, keys)
            self.picker.record("decode", dc.worker, keys)
            if self.picker.decode_alone(keys, dc):
                return None, dc.worker, True
            pc = self.picker.pick("prefill", self.prefill, keys)
            self.picker.record("prefill", pc.worker, keys)
            return pc.worker, dc.worker, False
        finally:
            self.route_cpu += time.process_time() - start

    # -- request flow ----------------------------------------------------------------------------
    def arrive(self, r: Request) -> None:
        now = r.at
        p, d, alone = self.route(r)
        blocks = len(r.tokens) // BLOCK
        self.prompt_tokens += blocks * BLOCK
        c = self.costs
        d.in_flight += 1
        d.served += 1
        if alone:
            self.alone += 1
            cached = d.cache.cached_blocks(r.tokens)
            self.hit_tokens += cached * BLOCK
            begin = max(now, d.busy_until)
            d.busy_until = begin + (blocks - cached) * c.prefill_per_block
            first = d.busy_until + c.first_token
            self.at(d.busy_until, lambda: self.store(d, r.tokens))
            self.first_token(r, d, first)
            return
        assert p is not None
        p.in_flight += 1
        p.served += 1
        cached = p.cache.cached_blocks(r.tokens)
        self.hit_tokens += cached * BLOCK
        begin = max(now, p.busy_until)
        p.busy_until = begin + c.hop_overhead + (blocks - cached) * c.prefill_per_block
        done = p.busy_until

        def prefilled() -> None:
            p.in_flight -= 1
            self.store(p, r.tokens)
            lacking = blocks - d.cache.cached_blocks(r.tokens)  # decode pulls only what it lacks
            self.pulled += lacking
            landed = done + lacking * c.pull_per_block
            self.at(landed, lambda: self.store(d, r.tokens))
            self.first_token(r, d, landed + c.first_token)

        self.at(done, prefilled)

    def first_token(self, r: Request, d: Worker, first: float) -> None:
        self.ttft.append(first - r.at)
        end = first + r.output_tokens * self.costs.token_time

        def finished() -> None:
            d.in_flight -= 1
            self.last = max(self.last, end)

        self.at(end, finished)

    def run(self, requests: list[Request]) -> Result:
        for r in requests:
            self.at(r.at, lambda r=r: self.arrive(r))
        while self.clock:
            t, _, fn = heapq.heappop(self.clock)
            fn()
        served_p = [w.served for w in self.prefill]
        served_d = [w.served for w in self.decode]
        spread = (lambda xs: max(xs) / statistics.mean(xs) if sum(xs) else 0.0)
        return Result(self.policy, self.ttft, len(requests) / self.last, self.hit_tokens, self.prompt_tokens,
                      self.pulled, self.alone, len(requests), spread(served_p), spread(served_d),
                      self.route_cpu / len(requests) * 1e6)


# -- the decision's cost ------------------------------------------------------------------------------
def decision_cost(prefixes: int, workers: int, seed: int) -> dict[str, tuple[float, float]]:
    """Microseconds (p50, p99) of hashing a request and of choosing a worker, with `prefixes` distinct prompts of
    about 40 blocks recorded over `workers` workers (approximate), and the precise equivalent from tokens."""
    rng = random.Random(seed)
    pool = [Worker("10.0.3.%d" % i, 8000, "decode", PrefixCacheModel(1, BLOCK)) for i in range(workers)]
    out: dict[str, tuple[float, float]] = {}
    bodies = [{"messages": [{"role": "system", "content": "sys %d " % (i % 50) * 300},
                            {"role": "user", "content": "%d " % i * 600}]} for i in range(prefixes)]
    for mode in (APPROXIMATE, PRECISE):
        picker = PrefixPicker(mode=mode, tokenizer=ToyTokenizer(), block_size=BLOCK, capacity=1 << 20)
        keyed = [picker.request_keys(b) for b in bodies]
        for i, keys in enumerate(keyed):
            worker = pool[i % workers]
            if mode == APPROXIMATE:
                picker.record("decode", worker, keys)
            else:
                picker.precise["decode"].index.add(f"{worker.host}:{worker.port}", keys.keys)
        hashing, picking = [], []
        for _ in range(3000):
            body = rng.choice(bodies) if rng.random() < 0.5 else {
                "messages": [{"role": "system", "content": "fresh %d " % rng.randrange(10**6) * 300},
                             {"role": "user", "content": "q"}]}
            t0 = time.perf_counter_ns()
            keys = picker.request_keys(body)
            t1 = time.perf_counter_ns()
            picker.pick("decode", pool, keys)
            t2 = time.perf_counter_ns()
            hashing.append((t1 - t0) / 1e3)
            picking.append((t2 - t1) / 1e3)
        tracked = picker.index("decode").distinct_keys()
        out[f"{mode} hash ({len(keys.keys)} blocks)"] = _p(hashing)
        out[f"{mode} choose ({tracked} keys tracked)"] = _p(picking)
    return out


def _p(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=1.6, help="new conversations per second")
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--systems", type=int, default=32)
    parser.add_argument("--prefill-workers", type=int, default=4)
    parser.add_argument("--decode-workers", type=int, default=4)
    parser.add_argument("--cache-blocks", type=int, default=2048, help="each worker's prefix cache, in blocks")
    parser.add_argument("--prefill-per-block", type=float, default=0.0016, help="s per 16-token block")
    parser.add_argument("--pull-per-block", type=float, default=0.0004, help="s per 16-token block")
    parser.add_argument("--hop-overhead", type=float, default=0.003, help="s per prefill hop")
    parser.add_argument("--first-token", type=float, default=0.02, help="s")
    parser.add_argument("--token-time", type=float, default=0.025, help="s per output token")
    parser.add_argument("--epsilon", type=float, default=0.25)
    parser.add_argument("--load-weight", type=float, default=0.0)
    parser.add_argument("--prefixes", type=int, default=10_000, help="tracked prefixes for the decision's cost")
    args = parser.parse_args(argv)

    console = Console(width=190)
    requests = trace(args.seed, args.rate, args.conversations, args.systems)
    costs = Costs(args.prefill_per_block, args.pull_per_block, args.hop_overhead, args.first_token, args.token_time)
    knobs = Knobs(args.epsilon, args.load_weight)
    results: list[Result] = []
    for policy in ("blind", "approximate", "precise", "oracle"):
        for decider in ((False,) if policy == "blind" else (False, True)):
            sim = Sim(policy, decider, costs, args.prefill_workers, args.decode_workers, args.cache_blocks,
                      args.seed, knobs)
            result = sim.run(requests)
            result.name = policy + (" + PD decider" if decider else "")
            results.append(result)
    blind = results[0]
    oracle = {False: results[-2], True: results[-1]}
    offered = len(requests) / requests[-1].at
    table = Table(title=f"{len(requests)} requests, {offered:.1f} req/s offered, {args.prefill_workers}P"
                        f"{args.decode_workers}D, eps {args.epsilon}")
    for col in ("policy", "TTFT p50 ms", "p50 / blind", "TTFT p99 ms", "p99 / blind", "req/s", "hit rate",
                "hit / oracle", "pulled blocks/req", "decode alone", "spread P", "spread D", "route CPU µs/req"):
        table.add_column(col, justify="right" if col != "policy" else "left")
    for r in results:
        p50, p99 = pct(r.ttft, 0.5), pct(r.ttft, 0.99)
        hit = r.hit_tokens / r.prompt_tokens
        ref = oracle[r.name.endswith("decider")]
        ref_hit = ref.hit_tokens / ref.prompt_tokens
        table.add_row(r.name, f"{p50 * 1e3:.0f}", f"{p50 / pct(blind.ttft, 0.5):.2f}", f"{p99 * 1e3:.0f}",
                      f"{p99 / pct(blind.ttft, 0.99):.2f}", f"{r.finished:.2f}", f"{hit:.1%}",
                      f"{hit / ref_hit:.0%}", f"{r.pulled_blocks / r.requests:.1f}", f"{r.alone / r.requests:.0%}",
                      # a role that served under 5 % of the requests has no meaningful spread
                      f"{r.spread_prefill:.2f}" if r.alone < 0.95 * r.requests else "-",
                      f"{r.spread_decode:.2f}", f"{r.route_cpu_us:.0f}")
    console.print(table)
    cost = Table(title=f"decision cost, {args.prefixes} prefixes tracked over 8 workers (this machine)")
    for col in ("step", "p50 µs", "p99 µs"):
        cost.add_column(col, justify="right" if col != "step" else "left")
    for step, (p50, p99) in decision_cost(args.prefixes, 8, args.seed).items():
        cost.add_row(step, f"{p50:.1f}", f"{p99:.1f}")
    console.print(cost)
    return 0


if __name__ == "__main__":
    sys.exit(main())
