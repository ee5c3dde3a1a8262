"""Three defects found beside the reference proxy, for every protocol: a worker's SSE error event after 200 keeps its
status and message and a deterministic one is not retried; one refused connection does not empty the pool; and the
benchmark checks every answer's tokens."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import aiohttp
import pytest

from diproxy.testing.fake_worker import Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy
from diproxy.workers import BACKOFF_FIRST, BACKOFF_MAX, Worker, not_backed_off
from tests.proxy.conftest import ENGINES, FAST_FLAGS, di_flags, post_stream, run, wait_ready, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import proxy_latency  # noqa: E402

# The role whose stream opens the client's answer: NeuronConnector relays prefill's first token, NIXL decode's stream.
FIRST_STREAM = {"neuron-connector": "prefill", "nixl": "decode"}


async def _start(etcd: str, prefix: str, behaviours: dict[str, list[Behaviour]]) -> dict[str, list[FakeWorker]]:
    return {role: [await FakeWorker(role, etcd=etcd, prefix=prefix, label=f"{role[0].upper()}{i}",
                                    behaviour=b).start() for i, b in enumerate(items)]
            for role, items in behaviours.items()}


async def _ready(proxy: RunningProxy, session: aiohttp.ClientSession, workers: dict[str, list[FakeWorker]]) -> None:
    await wait_ready(session, proxy.url)
    registry = proxy.state.registry
    assert registry is not None
    await wait_until(lambda: all(len(registry.usable(role)) == len(items) for role, items in workers.items()),
                     what="all workers usable")


async def _stop(workers: dict[str, list[FakeWorker]]) -> None:
    for items in workers.values():
        for worker in items:
            await worker.stop()


@pytest.mark.parametrize("engine", ENGINES)
def test_error_event_before_the_first_byte_keeps_status_and_message_and_4xx_is_not_retried(
        engine, etcd, prefix) -> None:
    role = FIRST_STREAM[engine]
    other = "decode" if role == "prefill" else "prefill"

    async def scenario() -> None:
        bad = Behaviour(tokens=3, fail="error_event", fail_after=0, error_status=400,
                        error_message="prompt is too long")
        workers = await _start(etcd.address, prefix, {role: [bad, bad], other: [Behaviour(tokens=3)]})
        try:
            async with RunningProxy(di_flags(engine, etcd.address, prefix)) as proxy, \
                    aiohttp.ClientSession() as session:
                await _ready(proxy, session, workers)
                async with session.post(proxy.url + "/v1/completions", json={"prompt": "x", "stream": True}) as r:
                    assert r.status == 400
                    error = (await r.json())["error"]
                assert error["message"] == "prompt is too long" and error["type"] == "BadRequestError"
                assert sum(len(w.requests) for w in workers[role]) == 1, "a 400 must not be retried on another worker"
                assert proxy.state.metrics.retries.value() == 0

                # A 500 error event is the worker's fault: another worker answers.
                workers[role][1].behaviour = Behaviour(tokens=3)
                for worker in workers[role]:
                    worker.requests.clear()
                workers[role][0].behaviour = Behaviour(fail="error_event", fail_after=0, error_status=500)
                results = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                           for _ in range(3)]
                assert all(r.status == 200 and r.done and not r.errors and len(r.texts) == 3 for r in results)
                # Each failed attempt counted, the first request's 400 too.
                assert proxy.state.metrics.errors.value("upstream_error") == 1 + len(workers[role][0].requests)
        finally:
            await _stop(workers)

    run(scenario)


@pytest.mark.parametrize("engine", ENGINES)
def test_error_event_mid_stream_reaches_the_client_as_the_worker_sent_it(engine, etcd, prefix) -> None:
    async def scenario() -> None:
        failing = Behaviour(tokens=5, fail="error_event", fail_after=3, error_status=500,
                            error_message="engine core died")
        workers = await _start(etcd.address, prefix, {"prefill": [Behaviour(tokens=5)], "decode": [failing]})
        try:
            async with RunningProxy(di_flags(engine, etcd.address, prefix)) as proxy, \
                    aiohttp.ClientSession() as session:
                await _ready(proxy, session, workers)
                result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                assert result.status == 200
                assert len(result.texts) == 3 and not result.done
                assert result.events[-1] == {"error": {"message": "engine core died", "type": "InternalServerError",
                                                       "param": None, "code": 500}}
                assert len(result.errors) == 1
                assert proxy.state.metrics.errors.value("stream_interrupted") == 1
        finally:
            await _stop(workers)

    run(scenario)


def test_standard_mode_passes_a_leading_error_event_with_its_status(etcd, prefix) -> None:
    async def scenario() -> None:
        worker = await FakeWorker("standalone", behaviour=Behaviour(
            fail="error_event", fail_after=0, error_status=400, error_message="bad sampling params")).start()
        try:
            async with RunningProxy(["--mode", "standard", "--endpoint", worker.address, *FAST_FLAGS]) as proxy, \
                    aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                async with session.post(proxy.url + "/v1/completions", json={"prompt": "x", "stream": True}) as r:
                    assert r.status == 400
                    assert (await r.json())["error"]["message"] == "bad sampling params"
                assert len(worker.requests) == 1
        finally:
            await worker.stop()

    run(scenario)


@pytest.mark.parametrize("engine", ENGINES)
def test_one_refused_connection_costs_a_short_back_off_not_the_worker(engine, etcd, prefix) -> None:
    """One prefill, health probes far apart: before, a refusal left no prefill until the next probe (503 here)."""
    async def scenario() -> None:
        workers = await _start(etcd.address, prefix,
                               {"prefill": [Behaviour(tokens=3)], "decode": [Behaviour(tokens=3)]})
        (prefill,) = workers["prefill"]
        try:
            async with RunningProxy(di_flags(engine, etcd.address, prefix, "--health-interval", "30",
                                             "--pair-wait-timeout", "0.3")) as proxy, \
                    aiohttp.ClientSession() as session:
                await _ready(proxy, session, workers)
                # Listening again well within the first back-off, so the retry after it connects.
                await prefill.refuse_connections(BACKOFF_FIRST / 4)
                started = time.monotonic()
                result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                elapsed = time.monotonic() - started
                assert result.status == 200 and result.done and len(result.texts) == 3, result.raw
                assert BACKOFF_FIRST <= elapsed < 1.0
                metrics = proxy.state.metrics
                assert metrics.errors.value("upstream_connect") == 1 and metrics.retries.value() == 1
                # Its answer forgave the refusal, and it never left the pool.
                registry = proxy.state.registry
                assert registry is not None
                (record,) = registry.usable("prefill")
                assert record.refusals == 0 and record.backoff_until == 0.0
        finally:
            await _stop(workers)

    run(scenario)


def test_back_off_grows_is_capped_is_forgiven_and_never_empties_a_pool() -> None:
    worker, other = Worker("prefill", "10.0.0.1", 8000), Worker("prefill", "10.0.0.2", 8000)
    delays = [worker.refused(100.0) for _ in range(7)]
    assert delays == [BACKOFF_FIRST * 2 ** i for i in range(5)] + [BACKOFF_MAX, BACKOFF_MAX]
    assert not_backed_off([worker, other], 100.0) == [other]
    other.refused(100.0)
    # Both backed off: the one whose back-off ends first is still offered.
    assert not_backed_off([worker, other], 100.0) == [other]
    assert not_backed_off([worker, other], 100.0 + BACKOFF_MAX) == [worker, other]
    worker.answered()
    assert worker.refusals == 0 and not_backed_off([worker, other], 100.0) == [worker]


def _sse(texts: list[str], done: bool = True) -> bytes:
    events = [b'data: {"id":"x","choices":[{"index":0,"text":"%s"}]}\n\n' % t.encode() for t in texts]
    return b"".join(events) + (b"data: [DONE]\n\n" if done else b"")


def test_benchmark_rejects_an_answer_missing_repeating_or_reordering_a_token() -> None:
    expected = proxy_latency.expected_texts("nc", 4)
    assert expected == [" P0", " D1", " D2", " D3"]
    assert proxy_latency.expected_texts("nixl", 3) == proxy_latency.expected_texts("direct", 3) == [" D0", " D1", " D2"]
    proxy_latency.check_answer(_sse(expected), expected)
    for wrong in (_sse(expected[1:]), _sse(expected + [" D3"]), _sse([" P0", " D2", " D1", " D3"]),
                  _sse(expected, done=False), _sse([" D0", " D1", " D2", " D3"])):
        with pytest.raises(proxy_latency.WrongAnswer):
            proxy_latency.check_answer(wrong, expected)
