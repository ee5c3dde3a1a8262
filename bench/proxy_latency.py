"""Proxy overhead on loopback: time to first token and per-request latency through the DI proxy versus calling
a fake worker directly (p50, p99), and sustained streaming requests/s, at 1, 16 and 64 concurrent streams.
Also the CPU each process spent per request, which shows who limits the rate when all of them share few cores."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diproxy.event_loop import new_event_loop  # noqa: E402
from diproxy.testing.etcd_server import EtcdServer, free_port  # noqa: E402

GOALS = "goals: p50 added <= 1 ms and p99 added <= 5 ms at 16 streams; >= 500 short streaming requests/s"


@dataclass
class Sample:
    ttft: float
    total: float


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, text=True)


def _worker(role: str, etcd: str, tokens: int) -> tuple[subprocess.Popen, str]:
    process = _start(["-m", "diproxy.testing.fake_worker", "--role", role, "--etcd", etcd, "--tokens", str(tokens),
                      "--token-interval", "0"])
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("READY "):
        process.kill()
        raise RuntimeError(f"fake {role} worker did not start")
    return process, line.split()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


async def _one(session: aiohttp.ClientSession, url: str, body: dict) -> Sample:
    started = time.perf_counter()
    ttft = 0.0
    async with session.post(url, json=body) as reply:
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {(await reply.text())[:200]}")
        async for _ in reply.content.iter_any():
            if not ttft:
                ttft = time.perf_counter() - started
    return Sample(ttft, time.perf_counter() - started)


async def _level(url: str, concurrency: int, seconds: float, tokens: int) -> tuple[list[Sample], float]:
    body = {"model": "fake-model", "prompt": "bench", "max_tokens": tokens, "stream": True}
    connector = aiohttp.TCPConnector(limit=0)
    samples: list[Sample] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(min(concurrency, 8)):
            await _one(session, url, body)  # warm connections and code paths
        stop_at = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < stop_at:
                samples.append(await _one(session, url, body))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return samples, len(samples) / elapsed


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_per_request(pids: dict[str, int], run: "Callable[[], tuple[list[Sample], float]]") -> tuple[
        list[Sample], float, dict[str, float]]:
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    samples, rate = run()
    count = max(1, len(samples))
    return samples, rate, {name: (_cpu_seconds(pid) - before[name]) / count for name, pid in pids.items()}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per concurrency level and target")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per streamed answer")
    parser.add_argument("--levels", default="1,16,64")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    processes: list[subprocess.Popen] = []
    with EtcdServer() as etcd:
        try:
            prefill, _ = _worker("prefill", etcd.address, args.tokens)
            decode, decode_address = _worker("decode", etcd.address, args.tokens)
            processes += [prefill, decode]
            port = free_port()
            proxy = _start(["-m", "diproxy", "--etcd", etcd.address, "--host", "127.0.0.1", "--port", str(port),
                            "--log-level", "WARNING"])
            processes.append(proxy)
            proxy_url = f"http://127.0.0.1:{port}"
            _wait_ready(proxy_url)
            pids = {"client": os.getpid(), "proxy": proxy.pid, "prefill": prefill.pid, "decode": decode.pid}
            print(f"{'streams':>7} | {'target':<6} | {'ttft p50':>9} {'ttft p99':>9} | {'total p50':>9} "
                  f"{'total p99':>9} | {'req/s':>7} | CPU ms per request")
            for concurrency in levels:
                results = {}
                for name, url in (("direct", f"http://{decode_address}/v1/completions"),
                                  ("proxy", f"{proxy_url}/v1/completions")):
                    # The client runs on the proxy's loop too, so it is no slower a bottleneck than what it measures.
                    with asyncio.Runner(loop_factory=new_event_loop) as runner:
                        samples, rate, cpu = _cpu_per_request(pids, lambda: runner.run(asyncio.wait_for(
                            _level(url, concurrency, args.seconds, args.tokens), args.seconds * 10 + 30)))
                    cpu_text = " ".join(f"{name} {value * 1e3:.2f}" for name, value in cpu.items())
                    ttfts, totals = [s.ttft for s in samples], [s.total for s in samples]
                    results[name] = (ttfts, totals, rate)
                    print(f"{concurrency:>7} | {name:<6} | {_pct(ttfts, .5) * 1e3:>7.2f}ms {_pct(ttfts, .99) * 1e3:>7.2f}ms"
                          f" | {_pct(totals, .5) * 1e3:>7.2f}ms {_pct(totals, .99) * 1e3:>7.2f}ms | {rate:>7.0f} | {cpu_text}")
                direct, via = results["direct"], results["proxy"]
                print(f"{concurrency:>7} | added  | {(_pct(via[0], .5) - _pct(direct[0], .5)) * 1e3:>7.2f}ms "
                      f"{(_pct(via[0], .99) - _pct(direct[0], .99)) * 1e3:>7.2f}ms | "
                      f"{(_pct(via[1], .5) - _pct(direct[1], .5)) * 1e3:>7.2f}ms "
                      f"{(_pct(via[1], .99) - _pct(direct[1], .99)) * 1e3:>7.2f}ms | "
                      f"mean total {statistics.fmean(via[1]) * 1e3:.2f}ms")
            print(GOALS)
            print("note: client, proxy and both fake workers share this machine's cores; figures are an upper bound.")
            return 0
        finally:
            for process in reversed(processes):
                _stop(process)


def _wait_ready(url: str, timeout: float = 15.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError("proxy did not become ready")


if __name__ == "__main__":
    raise SystemExit(main())
