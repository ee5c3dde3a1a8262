"""Cache-aware routing on loopback: the real proxy (`python -m diproxy --engine nixl`) in front of real fake workers
(`python -m diproxy.testing.fake_worker`, subprocesses with a prefix cache and greedy answers), one policy after
another, each on a fresh stack (cold caches) with the same trace at the same offered load.

Workload: multi-turn chat. --conversations conversations start at Poisson times (--rate a second); each picks one of
--systems shared system prompts (6-12 KB, 1.5k-3k tokens of the fake's toy tokenizer) and has 2-5 turns, each sent
--think seconds after the previous answer ended, with the history (the answers are greedy, so the same on every
policy). The fake workers charge --prefill-per-block per uncached 16-token block they compute and --pull-per-block per
block a decode pulls from a prefill; they do not queue (every request runs at once), so the figures show cached work
saved, not queueing.

Reported per policy: TTFT p50 and p99 (to the first content chunk), requests per second, the hit rate (prompt blocks
found cached on the worker that computed them, from the workers' own counters), the decode requests' spread (busiest
decode over the mean), the share served on decode alone, and the proxy's CPU per request (user + system from
/proc/<pid>/stat over the run). Every answer is checked token by token against the greedy answer.

Then the kill phase: approximate + PD decider + --migration-limit 2, the same load, and one decode SIGKILLed halfway:
0 failed streams and every answer token-exact is the goal.

Client, proxy, workers and etcd share this machine's cores: the figures are machine-dependent (docs/routing.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proxy_latency import _cpu_seconds, _process, _proxy, _ready_address, pct  # noqa: E402
from diproxy.testing.etcd_server import EtcdMissing, EtcdServer, etcd_binary  # noqa: E402
from diproxy.testing.fake_worker import greedy_context, greedy_tokens  # noqa: E402

POLICIES = {
    "blind (least in flight)": ["--routing", "blind"],
    "approximate": ["--routing", "approximate"],
    "approximate + PD decider": ["--routing", "approximate", "--pd-max-uncached-tokens", "2048"],
}
KILL_POLICY = ["--routing", "approximate", "--pd-max-uncached-tokens", "2048", "--migration-limit", "2"]


@dataclass
class Turn:
    conversation: int
    at: float  # earliest start, seconds after the run began


@dataclass
class Result:
    ttfts: list[float] = field(default_factory=list)
    failed: int = 0
    wrong: int = 0
    done: int = 0


def system_prompts(count: int, rng: random.Random) -> list[str]:
    words = "the of and to in is that for it as with was on be by this are from at or an not have".split()
    return [f"System {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(1400, 2800)))
            for i in range(count)]


async def conversation(session: aiohttp.ClientSession, url: str, system: str, turns: int, start: float,
                       think: float, tokens: int, result: Result, rng: random.Random) -> None:
    messages = [{"role": "system", "content": system}]
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: " + "why " * rng.randint(5, 40)})
        body = {"model": "fake-model", "messages": list(messages), "max_completion_tokens": tokens, "stream": True}
        expected = greedy_tokens(greedy_context(body, True), tokens)
        sent = time.monotonic()
        got: list[str] = []
        ok = False
        try:
            async with session.post(url + "/v1/chat/completions", json=body) as reply:
                if reply.status == 200:
                    async for line in reply.content:
                        text = line.decode().strip()
                        if not text.startswith("data: "):
                            continue
                        if text == "data: [DONE]":
                            ok = True
                            break
                        event = json.loads(text[6:])
                        if "error" in event:
                            break
                        content = (event["choices"][0].get("delta") or {}).get("content")
                        if content:
                            if not got:
                                result.ttfts.append(time.monotonic() - sent)
                            got.append(content)
        except aiohttp.ClientError:
            ok = False
        if not ok:
            result.failed += 1
            return
        if got != expected:
            result.wrong += 1
        result.done += 1
        messages.append({"role": "assistant", "content": "".join(got)})
        await asyncio.sleep(think)


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_:]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def start_worker(stack: ExitStack, role: str, label: str, etcd: str, args: argparse.Namespace) -> tuple[str, int]:
    process = stack.enter_context(_process([
        "-m", "diproxy.testing.fake_worker", "--role", role, "--label", label, "--etcd", etcd, "--lease-ttl", "2",
        "--tokens", str(args.tokens), "--token-interval", str(args.token_interval), "--first-token-delay", "0.003",
        "--prefix-cache-blocks", str(args.cache_blocks), "--prefill-per-block", str(args.prefill_per_block),
        "--pull-per-block", str(args.pull_per_block), "--greedy"]))
    return _ready_address(process, f"fake {role}"), process.pid


async def run_load(url: str, args: argparse.Namespace, on_half: object = None) -> tuple[Result, float]:
    rng = random.Random(args.seed)
    systems = system_prompts(args.systems, rng)
    result = Result()
    start = time.monotonic()
    at = start
    tasks = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for number in range(args.conversations):
            at += rng.expovariate(args.rate)
            tasks.append(asyncio.create_task(conversation(
                session, url, rng.choice(systems), rng.randint(2, 5), at, args.think, args.tokens, result,
                random.Random(args.seed * 1000 + number))))
        if on_half is not None:
            await asyncio.sleep((at - start) / 2)
            on_half()  # type: ignore[operator]
        await asyncio.gather(*tasks)
    return result, time.monotonic() - start


def one_policy(name: str, flags: list[str], args: argparse.Namespace, kill: bool = False) -> dict[str, object]:
    with ExitStack() as stack:
        etcd = stack.enter_context(EtcdServer())
        workers = {f"{role}{i}": start_worker(stack, role, f"{role[0].upper()}{i}", etcd.address, args)
                   for role in ("prefill", "decode") for i in range(args.workers)}
        proxy, url = _proxy(stack, ["--engine", "nixl", "--etcd", etcd.address, "--health-interval", "0.5",
                                    "--pair-wait-timeout", "10", *flags])
        while True:  # every worker usable, so every policy starts from the same pools
            pools = scrape(url)
            if all(pools.get(f'diproxy_pool_workers{{role="{r}",state="healthy"}}', 0) == args.workers
                   for r in ("prefill", "decode")):
                break
            time.sleep(0.1)
        killed: list[str] = []

        def kill_one() -> None:
            """SIGKILL the decode with the most streams in flight (its connections reset mid-stream)."""
            loads = scrape(url)
            decodes = {name: loads.get(f'diproxy_worker_in_flight{{role="decode",worker="{address}"}}', 0.0)
                       for name, (address, _) in workers.items() if name.startswith("decode")}
            victim = max(decodes, key=lambda name: decodes[name])
            killed.append(victim)
            os.kill(workers[victim][1], signal.SIGKILL)

        cpu_before = _cpu_seconds(proxy.pid)
        result, seconds = asyncio.run(run_load(url, args, kill_one if kill else None))
        cpu = _cpu_seconds(proxy.pid) - cpu_before
        proxy_metrics = scrape(url)
        counts, computed, cached = [], 0.0, 0.0
        for worker, (address, _) in workers.items():
            if worker in killed:
                continue
            figures = scrape(f"http://{address}")
            if worker.startswith("decode"):
                counts.append(figures.get("fake_requests_total", 0.0))
            computed += figures.get('fake_prefix_blocks_total{kind="computed"}', 0.0)
            cached += figures.get('fake_prefix_cached_blocks_total{kind="computed"}', 0.0)
        requests = result.done + result.failed
        return {
            "policy": name, "requests": requests, "failed": result.failed, "wrong": result.wrong,
            "ttft_p50": pct(result.ttfts, 0.5) * 1e3 if result.ttfts else float("nan"),
            "ttft_p99": pct(result.ttfts, 0.99) * 1e3 if result.ttfts else float("nan"),
            "rps": result.done / seconds, "hit": cached / computed if computed else 0.0,
            "spread": max(counts) / (sum(counts) / len(counts)) if counts and sum(counts) else float("nan"),
            "alone": proxy_metrics.get("diproxy_decode_alone_total", 0.0) / max(requests, 1),
            "cpu_ms": cpu * 1e3 / max(requests, 1),
            "migrated": proxy_metrics.get('diproxy_migrations_total{outcome="ok"}', 0.0),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=3, help="prefill and decode workers each")
    parser.add_argument("--conversations", type=int, default=60)
    parser.add_argument("--rate", type=float, default=3.0, help="conversations started per second")
    parser.add_argument("--systems", type=int, default=16)
    parser.add_argument("--think", type=float, default=0.2)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--token-interval", type=float, default=0.025)
    parser.add_argument("--cache-blocks", type=int, default=768, help="per worker: about four system prompts")
    parser.add_argument("--prefill-per-block", type=float, default=0.0016)
    parser.add_argument("--pull-per-block", type=float, default=0.0004)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-kill", action="store_true")
    args = parser.parse_args(argv)
    try:
        etcd_binary()
    except EtcdMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    rows = [one_policy(name, flags, args) for name, flags in POLICIES.items()]
    if not args.skip_kill:
        rows.append(one_policy("approximate + PD + migration, a decode killed", KILL_POLICY, args, kill=True))
    blind = rows[0]
    print(f"{args.workers} prefill + {args.workers} decode fake workers, {args.conversations} conversations at "
          f"{args.rate}/s, {os.cpu_count()} cores shared by client, proxy, workers and etcd\n")
    print("| policy | requests | failed | not token-exact | TTFT p50 ms | p50 / blind | TTFT p99 ms | p99 / blind | "
          "req/s | hit rate | decode spread | decode alone | migrated | proxy CPU ms/req | CPU / blind |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['policy']} | {row['requests']} | {row['failed']} | {row['wrong']} | {row['ttft_p50']:.0f} | "
              f"{row['ttft_p50'] / blind['ttft_p50']:.2f} | {row['ttft_p99']:.0f} | "
              f"{row['ttft_p99'] / blind['ttft_p99']:.2f} | {row['rps']:.2f} | {row['hit']:.1%} | "
              f"{row['spread']:.2f} | {row['alone']:.0%} | {row['migrated']:.0f} | {row['cpu_ms']:.2f} | "
              f"{row['cpu_ms'] / blind['cpu_ms']:.2f} |")
    bad = [row for row in rows if row["failed"] or row["wrong"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
