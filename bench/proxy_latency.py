"""Proxy overhead on loopback, with fake workers, in a bounded run (about two minutes with the defaults).
Two phases, each against a fresh stack of subprocesses: etcd, one DI proxy (`python -m diproxy --engine E`) per
engine of --engines (default both: targets `nixl` and `nc` for neuron-connector), one fake prefill and one fake decode
worker (`python -m diproxy.testing.fake_worker`, which speaks both protocols). The client runs here, on uvloop.
Every answer's content is checked: the fake workers' tokens, in order, each exactly once, then [DONE] (direct and
the relays: decode's D0..; nixl: decode's whole answer D0..; nc: prefill's P0, then decode's D1..); a wrong answer
stops the benchmark.

Latency phase, realistic pacing. Each fake worker answers 200 at once, as vLLM does, waits --first-token-delay
(default 5 ms, the prefill of a short prompt) and streams --tokens (16) tokens --token-interval (10 ms) apart. No
measured inter-token figure for the 8B model of config/dev.yaml (Llama-3.1-8B-Instruct, TP 16 on trn1) is at hand;
10 ms is taken as a fast decode step for it, and is the harsher choice here: a shorter interval means more chunks
per second for the proxy to relay. A closed loop of 1, 16 and 64 concurrent streams calls the decode worker directly
or a proxy. neuron-connector sends both legs at once and relays prefill's first token; nixl waits for prefill's
whole (one-token) answer, then streams decode's, and a fake decode handed prefill's KV skips its own first-token
delay as a real one skips the prefill, so both protocols face the same pacing. Each client starts
at a random point within one answer's length: equal-length streams started together would stay in lockstep, and
every request would queue behind all the others' set-up. At --relay-levels (16) two more targets stand in front of
the decode worker: `relay`, the proxy in standard mode, which relays the worker's bytes without parsing them (the
cost of one more aiohttp server and client on the path), and `tcp`, bench/tcp_relay.py copying bytes between sockets
on uvloop without any HTTP (the cost of one more process on the path and nothing else). Together they split the DI
proxy's figure into process hop, HTTP handling, and DI's own work. Targets take turns in slices
of --slice seconds, the order reversing every round, so that drifting background load hits all alike; a level runs
at least --seconds per target and goes on until each target has --min-samples answers or --max-seconds have passed.
Reported: time to the first body byte (TTFT) and to the end of the stream (total), p50 and p99, and the added
latency (target minus direct, per percentile). The range of the added TTFT p50 over the rounds shows whether noise
could flip its sign. Each phase ends with how much CPU time other processes used and how much the hypervisor stole,
which is what moves p99 between runs on a shared host.

Throughput phase. The workers stream --short-tokens (4) tokens with no pacing at all; closed loops of 16 and 64
streams give the sustained requests/s direct and through each proxy, targets taking turns of --slice seconds as in
the latency phase, and the CPU each process spent per request
(user + system, from /proc), which shows who limits the rate when all processes share this machine's cores.

Client, proxy, workers and etcd share the machine, so the figures are an upper bound of the proxy's own cost."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diproxy.event_loop import new_event_loop  # noqa: E402
from diproxy.testing.etcd_server import EtcdMissing, EtcdServer, etcd_binary, free_port  # noqa: E402

GOAL_P50_MS = 1.0
GOAL_P99_MS = 5.0
GOAL_STREAMS = 16
GOAL_RATE = 500.0


# -- the processes under test ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pacing:
    tokens: int
    token_interval: float
    first_token_delay: float

    def flags(self) -> list[str]:
        # --headers-first: a fake worker would otherwise hold its status line back until the first token, and the
        # proxy, which waits for decode to accept before its first byte, would wait on decode's send as well.
        return ["--tokens", str(self.tokens), "--token-interval", str(self.token_interval),
                "--first-token-delay", str(self.first_token_delay), "--headers-first"]

    @property
    def stream_seconds(self) -> float:
        """How long one answer takes at this pacing when nothing else is slow."""
        return self.first_token_delay + max(0, self.tokens - 1) * self.token_interval

    def describe(self) -> str:
        if not self.token_interval and not self.first_token_delay:
            return f"{self.tokens} tokens, no pacing"
        return (f"{self.tokens} tokens {self.token_interval * 1e3:g} ms apart, the first after "
                f"{self.first_token_delay * 1e3:g} ms")


@dataclass
class Stack:
    urls: dict[str, str]  # target name -> completions URL
    pids: dict[str, int]  # process name -> pid, for CPU accounting


def _python(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def _process(args: list[str]) -> Iterator[subprocess.Popen]:
    process = _python(args)
    try:
        yield process
    finally:
        _stop(process)


def _ready_address(process: subprocess.Popen, what: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("READY "):
        raise RuntimeError(f"{what} did not start")
    return line.split()[1]


def _wait_ready(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"proxy at {url} did not become ready")


def _proxy(stack: ExitStack, flags: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = stack.enter_context(_process(["-m", "diproxy", *flags, "--host", "127.0.0.1", "--port", str(port),
                                            "--log-level", "WARNING"]))
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url)
    return process, url


ENGINE_TARGETS = {"nixl": "nixl", "neuron-connector": "nc"}


@contextmanager
def running_stack(pacing: Pacing, engines: list[str], with_relay: bool) -> Iterator[Stack]:
    """A fresh etcd, both fake workers paced alike, one DI proxy per engine and, if asked, a standard-mode relay and
    a TCP relay in front of the decode worker; all ready to serve, all stopped on exit."""
    with ExitStack() as stack:
        etcd = stack.enter_context(EtcdServer())
        assert etcd.process is not None
        workers, addresses = {}, {}
        for role in ("prefill", "decode"):
            workers[role] = stack.enter_context(_process(["-m", "diproxy.testing.fake_worker", "--role", role,
                                                          "--etcd", etcd.address, *pacing.flags()]))
            addresses[role] = _ready_address(workers[role], f"fake {role} worker")
        pids = {"client": os.getpid(), "prefill": workers["prefill"].pid, "decode": workers["decode"].pid,
                "etcd": etcd.process.pid}
        urls = {"direct": f"http://{addresses['decode']}/v1/completions"}
        for engine in engines:
            proxy, proxy_url = _proxy(stack, ["--engine", engine, "--etcd", etcd.address])
            target = ENGINE_TARGETS[engine]
            pids[target], urls[target] = proxy.pid, f"{proxy_url}/v1/completions"
        if with_relay:
            relay, relay_url = _proxy(stack, ["--mode", "standard", "--endpoint", addresses["decode"]])
            pids["relay"], urls["relay"] = relay.pid, f"{relay_url}/v1/completions"
            tcp = stack.enter_context(_process([str(Path(__file__).with_name("tcp_relay.py")), addresses["decode"]]))
            pids["tcp"], urls["tcp"] = tcp.pid, f"http://{_ready_address(tcp, 'TCP relay')}/v1/completions"
        yield Stack(urls, pids)


# -- checking answers ---------------------------------------------------------------------------------------------
class WrongAnswer(RuntimeError):
    """An answer that is not the fake workers' tokens, in order, each once, ending with [DONE]."""


def expected_texts(target: str, tokens: int) -> list[str]:
    """The texts a streamed answer of `tokens` tokens carries at target (fake worker labels P and D)."""
    if target == "nc":  # NeuronConnector: prefill's first token, then decode's from the second on
        return [" P0", *(f" D{i}" for i in range(1, tokens))]
    return [f" D{i}" for i in range(tokens)]


def check_answer(raw: bytes, expected: list[str]) -> None:
    texts, done = [], False
    for block in raw.split(b"\n\n"):
        if not block.startswith(b"data: "):
            continue
        data = block[len(b"data: "):]
        if data == b"[DONE]":
            if done:
                raise WrongAnswer("[DONE] twice")
            done = True
            continue
        if done:
            raise WrongAnswer(f"data after [DONE]: {data[:100]!r}")
        payload = json.loads(data)
        if "error" in payload:
            raise WrongAnswer(f"error event: {payload['error']}")
        texts += [choice.get("text") for choice in payload.get("choices") or []]
    if texts != expected or not done:
        raise WrongAnswer(f"expected {expected} and [DONE], got {texts}{' and [DONE]' if done else ' without [DONE]'}")


# -- measuring ----------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    ttft: float
    total: float


@dataclass
class Tally:
    """Everything measured for one target at one concurrency level, summed over its slices."""

    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds
    round_ttft_p50: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.samples) / self.seconds if self.seconds else 0.0

    def ttfts(self) -> list[float]:
        return [s.ttft for s in self.samples]

    def totals(self) -> list[float]:
        return [s.total for s in self.samples]

    def cpu_ms_per_request(self) -> dict[str, float]:
        count = max(1, len(self.samples))
        return {name: seconds * 1e3 / count for name, seconds in self.cpu.items()}


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class MachineSnapshot:
    """Machine-wide CPU time (Linux /proc/stat, in seconds) and the benchmark's own processes' share of it."""

    busy: float  # user, nice and system time of all processes
    steal: float  # time the hypervisor gave this machine's CPUs to others
    total: float
    ours: float

    @classmethod
    def take(cls, pids: dict[str, int]) -> "MachineSnapshot":
        fields = [int(x) / os.sysconf("SC_CLK_TCK") for x in Path("/proc/stat").read_text().split()[1:9]]
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields
        return cls(user + nice + system, steal, sum(fields), sum(_cpu_seconds(pid) for pid in pids.values()))

    def noise_since(self, earlier: "MachineSnapshot") -> str:
        """How much CPU went to other processes and to the hypervisor's other guests, which disturbs the figures."""
        total = max(self.total - earlier.total, 1e-9)
        others = max(0.0, (self.busy - earlier.busy) - (self.ours - earlier.ours))
        return (f"during this phase {100 * others / total:.0f}% of the CPU time went to processes outside the "
                f"benchmark and {100 * (self.steal - earlier.steal) / total:.0f}% was stolen by the hypervisor")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass(frozen=True)
class Load:
    """What the closed loop sends: one request body, from `concurrency` clients."""

    body: dict
    concurrency: int
    stagger: float  # clients start at random points within this many seconds
    expected: dict[str, list[str]]  # target -> the texts each answer must carry


async def _one(session: aiohttp.ClientSession, url: str, body: dict, expected: list[str]) -> Sample:
    started = time.perf_counter()
    ttft = 0.0
    chunks = []
    async with session.post(url, json=body) as reply:
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {(await reply.text())[:200]}")
        async for chunk in reply.content.iter_any():
            if not ttft:
                ttft = time.perf_counter() - started
            chunks.append(chunk)
    finished = time.perf_counter() - started
    check_answer(b"".join(chunks), expected)  # after the clock stopped: checking is the client's cost, not the target's
    return Sample(ttft, finished)


async def _closed_loop(session: aiohttp.ClientSession, url: str, target: str, load: Load,
                       seconds: float) -> list[Sample]:
    """load.concurrency clients, each sending its next request as soon as its last one ended, for seconds.
    Requests started before the end are waited for, so every sample is a whole request."""
    samples: list[Sample] = []
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        await asyncio.sleep(random.uniform(0, load.stagger))
        while time.perf_counter() < stop_at:
            samples.append(await _one(session, url, load.body, load.expected[target]))

    await asyncio.gather(*(client() for _ in range(load.concurrency)))
    return samples


async def _measured_slice(session: aiohttp.ClientSession, url: str, target: str, load: Load, seconds: float,
                          pids: dict[str, int], tally: Tally) -> None:
    cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    samples = await asyncio.wait_for(_closed_loop(session, url, target, load, seconds), seconds * 10 + 30)
    tally.seconds += time.perf_counter() - started
    for name, pid in pids.items():
        tally.cpu[name] = tally.cpu.get(name, 0.0) + _cpu_seconds(pid) - cpu_before[name]
    tally.samples += samples
    tally.round_ttft_p50.append(pct([s.ttft for s in samples], .5))


@dataclass(frozen=True)
class Budget:
    slice: float  # seconds per target in one round
    seconds: float  # least measuring time per target
    max_seconds: float  # most measuring time per target
    min_samples: int  # go on past `seconds` until each target has this many, within max_seconds


def _level_done(tallies: dict[str, Tally], budget: Budget) -> bool:
    spent = min(t.seconds for t in tallies.values())
    enough = min(len(t.samples) for t in tallies.values()) >= budget.min_samples
    return spent >= budget.max_seconds or (spent >= budget.seconds and enough)


async def measure_level(stack: Stack, targets: tuple[str, ...], pacing: Pacing, concurrency: int,
                        budget: Budget) -> dict[str, Tally]:
    """Give the targets turns (the order reversing each round) until the budget says the level is done."""
    body = {"model": "fake-model", "prompt": "bench", "max_tokens": pacing.tokens, "stream": True}
    expected = {name: expected_texts(name, pacing.tokens) for name in targets}
    load = Load(body, concurrency, stagger=pacing.stream_seconds, expected=expected)
    tallies = {name: Tally() for name in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for name in targets:
            # Open the connections and warm the code paths outside the measured time.
            await asyncio.gather(*(_one(session, stack.urls[name], body, expected[name]) for _ in range(concurrency)))
        round_number = 0
        while not _level_done(tallies, budget):
            for name in targets if round_number % 2 == 0 else targets[::-1]:
                await _measured_slice(session, stack.urls[name], name, load, budget.slice, stack.pids, tallies[name])
            round_number += 1
    return tallies


# -- reporting ----------------------------------------------------------------------------------------------------
@dataclass
class Added:
    ttft_p50: float
    ttft_p99: float
    total_p50: float
    total_p99: float


def added_latency(tallies: dict[str, Tally], target: str) -> Added:
    direct, via = tallies["direct"], tallies[target]
    return Added(pct(via.ttfts(), .5) - pct(direct.ttfts(), .5), pct(via.ttfts(), .99) - pct(direct.ttfts(), .99),
                 pct(via.totals(), .5) - pct(direct.totals(), .5), pct(via.totals(), .99) - pct(direct.totals(), .99))


def _ms(seconds: float, signed: bool = False) -> str:
    return f"{seconds * 1e3:+9.2f}" if signed else f"{seconds * 1e3:9.2f}"


LATENCY_HEADER = (f"{'streams':>7} | {'target':<11} | {'n':>5} | {'TTFT p50':>9} {'TTFT p99':>9} | "
                  f"{'total p50':>9} {'total p99':>9} | {'req/s':>5} | CPU ms/req of the target")


def print_latency_level(concurrency: int, tallies: dict[str, Tally]) -> None:
    for name, t in tallies.items():
        cpu = t.cpu_ms_per_request()["decode" if name == "direct" else name]
        print(f"{concurrency:>7} | {name:<11} | {len(t.samples):>5} | {_ms(pct(t.ttfts(), .5))} "
              f"{_ms(pct(t.ttfts(), .99))} | {_ms(pct(t.totals(), .5))} {_ms(pct(t.totals(), .99))} | "
              f"{t.rate:>5.0f} | {cpu:.2f}")
    for name in (n for n in ("tcp", "relay", *ENGINE_TARGETS.values()) if n in tallies):
        a = added_latency(tallies, name)
        per_round = [v - d for v, d in zip(tallies[name].round_ttft_p50, tallies["direct"].round_ttft_p50)]
        print(f"{concurrency:>7} | {name + ' added':<11} | {'':>5} | {_ms(a.ttft_p50, True)} {_ms(a.ttft_p99, True)} | "
              f"{_ms(a.total_p50, True)} {_ms(a.total_p99, True)} | {'':>5} | TTFT p50 added per round "
              f"{min(per_round) * 1e3:+.2f}..{max(per_round) * 1e3:+.2f} ms ({len(per_round)} rounds)")


THROUGHPUT_HEADER = (f"{'streams':>7} | {'target':<6} | {'n':>6} | {'req/s':>6} | {'total p50':>9} "
                     f"{'total p99':>9} | CPU ms per request")


def print_throughput_level(concurrency: int, tallies: dict[str, Tally]) -> None:
    for name, t in tallies.items():
        cpu = " ".join(f"{process} {value:.2f}" for process, value in t.cpu_ms_per_request().items())
        print(f"{concurrency:>7} | {name:<6} | {len(t.samples):>6} | {t.rate:>6.0f} | "
              f"{_ms(pct(t.totals(), .5))} {_ms(pct(t.totals(), .99))} | {cpu}")


def _verdict(goal: str, met: bool, figure: str) -> str:
    return f"verdict: {goal}: {'MET' if met else 'NOT MET'} ({figure})"


def verdicts(latency: dict[int, dict[str, Tally]], throughput: dict[int, dict[str, Tally]],
             targets: list[str]) -> list[str]:
    lines = []
    for target in targets:
        if GOAL_STREAMS in latency:
            a = added_latency(latency[GOAL_STREAMS], target)
            lines.append(_verdict(f"{target}: p50 added latency <= {GOAL_P50_MS:g} ms at {GOAL_STREAMS} streams",
                                  max(a.ttft_p50, a.total_p50) * 1e3 <= GOAL_P50_MS,
                                  f"TTFT {a.ttft_p50 * 1e3:+.2f} ms, total {a.total_p50 * 1e3:+.2f} ms"))
            lines.append(_verdict(f"{target}: p99 added latency <= {GOAL_P99_MS:g} ms at {GOAL_STREAMS} streams",
                                  max(a.ttft_p99, a.total_p99) * 1e3 <= GOAL_P99_MS,
                                  f"TTFT {a.ttft_p99 * 1e3:+.2f} ms, total {a.total_p99 * 1e3:+.2f} ms"))
        if throughput:
            best = max(throughput, key=lambda c: throughput[c][target].rate)
            rate, direct = throughput[best][target].rate, throughput[best]["direct"].rate
            lines.append(_verdict(f"{target}: >= {GOAL_RATE:g} short streaming requests/s through the proxy",
                                  rate >= GOAL_RATE, f"{rate:.0f} req/s at {best} streams; {direct:.0f} calling the "
                                  "decode worker directly"))
    return lines


# -- the run ------------------------------------------------------------------------------------------------------
def _levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _engines(text: str) -> list[str]:
    engines = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [e for e in engines if e not in ENGINE_TARGETS]
    if unknown or not engines:
        raise argparse.ArgumentTypeError(f"engines are {', '.join(ENGINE_TARGETS)}; got {text!r}")
    return engines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=_engines, default=list(ENGINE_TARGETS),
                        help="protocols to measure, comma-separated, each through its own proxy "
                        "(default nixl,neuron-connector)")
    latency = parser.add_argument_group("latency phase")
    latency.add_argument("--levels", type=_levels, default=[1, 16, 64], help="concurrent streams (default 1,16,64)")
    latency.add_argument("--relay-levels", type=_levels, default=[GOAL_STREAMS],
                         help=f"levels that also measure a standard-mode relay (default {GOAL_STREAMS}; empty: none)")
    latency.add_argument("--tokens", type=int, default=16, help="tokens per answer (default 16)")
    latency.add_argument("--token-interval", type=float, default=0.010, help="seconds between tokens (default 0.010)")
    latency.add_argument("--first-token-delay", type=float, default=0.005,
                         help="seconds before a worker's first token (default 0.005)")
    latency.add_argument("--seconds", type=float, default=8.0,
                         help="least measuring time per level and target (default 8)")
    latency.add_argument("--max-seconds", type=float, default=18.0,
                         help="most measuring time per level and target (default 18)")
    latency.add_argument("--min-samples", type=int, default=1000,
                         help="answers per level and target wanted before stopping after --seconds (default 1000)")
    # Short turns spread a burst of outside load (another guest on the host, say) over the targets instead of
    # letting it land in one target's p99.
    latency.add_argument("--slice", type=float, default=1.0,
                         help="seconds per target before the next one takes its turn (default 1)")
    throughput = parser.add_argument_group("throughput phase")
    throughput.add_argument("--throughput-levels", type=_levels, default=[16, 64],
                            help="concurrent streams (default 16,64; empty: skip the phase)")
    throughput.add_argument("--short-tokens", type=int, default=4, help="tokens per short answer (default 4)")
    throughput.add_argument("--throughput-seconds", type=float, default=4.0,
                            help="measuring time per level and target (default 4)")
    return parser.parse_args(argv)


async def latency_phase(args: argparse.Namespace) -> dict[int, dict[str, Tally]]:
    pacing = Pacing(args.tokens, args.token_interval, args.first_token_delay)
    budget = Budget(args.slice, args.seconds, args.max_seconds, args.min_samples)
    print(f"latency phase: workers answer at once and stream {pacing.describe()}; closed loop, clients staggered; "
          f"targets take turns of {args.slice:g} s; n = answers per row")
    print(LATENCY_HEADER)
    results = {}
    proxies = tuple(ENGINE_TARGETS[e] for e in args.engines)
    with running_stack(pacing, args.engines, with_relay=bool(args.relay_levels)) as stack:
        machine = MachineSnapshot.take(stack.pids)
        for concurrency in args.levels:
            relays = ("tcp", "relay") if concurrency in args.relay_levels else ()
            targets = ("direct", *relays, *proxies)
            results[concurrency] = await measure_level(stack, targets, pacing, concurrency, budget)
            print_latency_level(concurrency, results[concurrency])
        print(f"note: {MachineSnapshot.take(stack.pids).noise_since(machine)}")
    few = [c for c, t in results.items() if min(len(x.samples) for x in t.values()) < args.min_samples]
    if few:
        print(f"note: fewer than {args.min_samples} answers per target at {', '.join(map(str, few))} stream(s) within "
              f"--max-seconds; there p99 is close to the slowest answer seen")
    return results


async def throughput_phase(args: argparse.Namespace) -> dict[int, dict[str, Tally]]:
    pacing = Pacing(args.short_tokens, 0.0, 0.0)
    # Turns of --slice seconds, the order reversing every round, as in the latency phase: drifting background load
    # then hits every target alike.
    budget = Budget(min(args.slice, args.throughput_seconds), args.throughput_seconds, args.throughput_seconds, 0)
    print(f"throughput phase: workers stream {pacing.describe()}; closed loop, {args.throughput_seconds:g} s "
          f"per target in turns of {budget.slice:g} s")
    print(THROUGHPUT_HEADER)
    results = {}
    targets = ("direct", *(ENGINE_TARGETS[e] for e in args.engines))
    with running_stack(pacing, args.engines, with_relay=False) as stack:
        machine = MachineSnapshot.take(stack.pids)
        for concurrency in args.throughput_levels:
            results[concurrency] = await measure_level(stack, targets, pacing, concurrency, budget)
            print_throughput_level(concurrency, results[concurrency])
        print(f"note: {MachineSnapshot.take(stack.pids).noise_since(machine)}")
    return results


async def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    latency = await latency_phase(args) if args.levels else {}
    print()
    throughput = await throughput_phase(args) if args.throughput_levels else {}
    print()
    for line in verdicts(latency, throughput, [ENGINE_TARGETS[e] for e in args.engines]):
        print(line)
    print(f"note: client, proxy, both fake workers and etcd share this machine's {os.cpu_count()} cores; "
          f"run took {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        etcd_binary()
    except EtcdMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    # The client runs on the proxy's loop too, so it is no slower a bottleneck than what it measures.
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
