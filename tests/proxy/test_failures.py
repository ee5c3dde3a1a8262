"""Failure handling: no workers, failing, hanging and killed workers, pool changes and an etcd restart."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from diproxy.testing.fake_worker import Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy
from tests.proxy.conftest import di_flags, post_stream, run, wait_ready, wait_until


def _flags(etcd: str, prefix: str, *extra: str) -> list[str]:
    """The NeuronConnector protocol: these tests predate the NIXL one, whose failures test_nixl.py covers."""
    return di_flags("neuron-connector", etcd, prefix, *extra)


async def _usable(proxy: RunningProxy, role: str, count: int, timeout: float = 5.0) -> None:
    registry = proxy.state.registry
    assert registry is not None
    await wait_until(lambda: len(registry.usable(role)) == count, timeout, f"{count} usable {role}")


def test_zero_workers_gives_timely_503_without_stalling_others(etcd, prefix) -> None:
    async def scenario() -> None:
        async with RunningProxy(_flags(etcd.address, prefix, "--pair-wait-timeout", "0.4")) as proxy, \
                aiohttp.ClientSession() as session:
            async def completion() -> tuple[int, dict, dict, float]:
                started = time.monotonic()
                async with session.post(proxy.url + "/v1/completions", json={"prompt": "x", "stream": True}) as r:
                    return r.status, dict(r.headers), await r.json(), time.monotonic() - started

            waiting = [asyncio.create_task(completion()) for _ in range(5)]
            await wait_until(lambda: proxy.state.admission.in_flight == 5, what="five requests waiting for a pair")
            started = time.monotonic()
            async with session.get(proxy.url + "/health") as r:
                assert r.status == 200
            async with session.get(proxy.url + "/ready") as r:
                assert r.status == 503
            assert proxy.state.admission.in_flight == 5, "the probes ran while every request was still waiting"
            assert time.monotonic() - started < 0.3, "probes waited behind requests with no worker"
            for status, headers, body, elapsed in await asyncio.gather(*waiting):
                assert status == 503
                assert headers["Retry-After"].isdigit()
                assert body["error"]["code"] == "no_worker_available" and body["error"]["message"]
                assert 0.35 <= elapsed < 2.0

    run(scenario)


def test_request_waits_for_a_pair_that_registers_meanwhile(etcd, prefix) -> None:
    async def scenario() -> None:
        async with RunningProxy(_flags(etcd.address, prefix, "--pair-wait-timeout", "5")) as proxy, \
                aiohttp.ClientSession() as session:
            pending = asyncio.create_task(post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"}))
            await wait_until(lambda: proxy.state.admission.in_flight == 1, what="the request waiting for a pair")
            workers = [await FakeWorker(role, etcd=etcd.address, prefix=prefix,
                                        behaviour=Behaviour(tokens=3)).start() for role in ("prefill", "decode")]
            try:
                result = await pending
                assert result.status == 200 and result.done and result.texts == [" P0", " D1", " D2"]
            finally:
                for worker in workers:
                    await worker.stop()

    run(scenario)


def test_workers_join_and_leave_while_serving(etcd, prefix) -> None:
    async def scenario() -> None:
        first = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, label="A",
                                 behaviour=Behaviour(tokens=3)).start()
        decode = await FakeWorker("decode", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=3)).start()
        second: FakeWorker | None = None
        try:
            async with RunningProxy(_flags(etcd.address, prefix, "--selection", "round-robin")) as proxy, \
                    aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                stop = asyncio.Event()
                results = []

                async def traffic() -> None:
                    for _ in range(200):
                        if stop.is_set():
                            return
                        results.append(await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"}))

                load = asyncio.create_task(traffic())
                second = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, label="B",
                                          behaviour=Behaviour(tokens=3)).start()
                await _usable(proxy, "prefill", 2)
                await wait_until(lambda: len(second.requests) >= 2, what="new worker receiving traffic")
                await first.stop()  # clean shutdown: lease revoked, key deleted
                await _usable(proxy, "prefill", 1)
                served_by_first = len(first.requests)
                answered = len(results)
                await wait_until(lambda: len(results) >= answered + 10, what="traffic after the worker left")
                stop.set()
                await load
                assert len(first.requests) == served_by_first
                assert results and all(r.status == 200 and r.done and not r.errors for r in results)
        finally:
            for worker in (first, decode, second):
                if worker is not None:
                    await worker.stop()

    run(scenario)


def test_prefill_error_status_is_retried_on_another_worker(etcd, prefix) -> None:
    async def scenario() -> None:
        broken = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, label="X",
                                  behaviour=Behaviour(fail="status500")).start()
        good = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=3)).start()
        decode = await FakeWorker("decode", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=3)).start()
        try:
            async with RunningProxy(_flags(etcd.address, prefix, "--selection", "round-robin")) as proxy, \
                    aiohttp.ClientSession() as session:
                await _usable(proxy, "prefill", 2)
                results = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                           for _ in range(4)]
                assert all(r.status == 200 and r.done and r.texts == [" P0", " D1", " D2"] for r in results)
                assert len(broken.requests) >= 1
                retried_uids = {q.request_id.split("_")[0] for q in broken.requests}  # type: ignore[union-attr]
                served_uids = {q.request_id.split("_")[0] for q in good.requests}  # type: ignore[union-attr]
                assert not retried_uids & served_uids, "a retry must carry a fresh uid"
                # Decode saw the abandoned attempt too; each retry pairs it again under the new uid.
                assert len(decode.requests) == 4 + len(broken.requests)
                assert proxy.state.metrics.retries.value() == len(broken.requests)
        finally:
            for worker in (broken, good, decode):
                await worker.stop()

    run(scenario)


def test_failures_without_alternative_end_in_502_or_504_json(etcd, prefix) -> None:
    async def scenario() -> None:
        prefill = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix,
                                   behaviour=Behaviour(fail="status500")).start()
        decode = await FakeWorker("decode", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=3)).start()
        try:
            async with RunningProxy(_flags(etcd.address, prefix, "--first-token-timeout", "0.2")) as proxy, \
                    aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                for stream in (True, False):
                    async with session.post(proxy.url + "/v1/completions",
                                            json={"prompt": "x", "stream": stream}) as r:
                        assert r.status == 502
                        error = (await r.json())["error"]
                        assert error["code"] == "upstream_status" and error["type"] == "upstream_error"
                assert len(prefill.requests) == 4  # each request tried twice

                prefill.behaviour = Behaviour(fail="hang")
                started = time.monotonic()
                async with session.post(proxy.url + "/v1/completions", json={"prompt": "x", "stream": True}) as r:
                    assert r.status == 504
                    assert (await r.json())["error"]["code"] == "upstream_timeout"
                assert time.monotonic() - started < 2.0
        finally:
            await prefill.stop()
            await decode.stop()

    run(scenario)


def test_hanging_prefill_is_abandoned_for_another_pair(etcd, prefix) -> None:
    async def scenario() -> None:
        hung = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, label="H",
                                behaviour=Behaviour(fail="hang")).start()
        good = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=3)).start()
        decode = await FakeWorker("decode", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=3)).start()
        try:
            async with RunningProxy(_flags(etcd.address, prefix, "--selection", "round-robin",
                                           "--first-token-timeout", "0.2")) as proxy, \
                    aiohttp.ClientSession() as session:
                await _usable(proxy, "prefill", 2)
                results = [await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                           for _ in range(2)]
                assert all(r.status == 200 and r.done for r in results)
                assert len(hung.requests) >= 1
                assert proxy.state.metrics.errors.value("upstream_timeout") == len(hung.requests)
                assert proxy.state.metrics.retries.value() == len(hung.requests)
        finally:
            for worker in (hung, good, decode):
                await worker.stop()

    run(scenario)


def test_decode_dying_mid_stream_ends_with_an_error_event_not_done(etcd, prefix) -> None:
    async def scenario() -> None:
        prefill = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=6)).start()
        decode = await FakeWorker("decode", etcd=etcd.address, prefix=prefix,
                                  behaviour=Behaviour(tokens=6, fail="die", fail_after=3)).start()
        try:
            async with RunningProxy(_flags(etcd.address, prefix, "--idle-timeout", "0.2")) as proxy, \
                    aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                assert result.status == 200  # headers went out with the first token
                assert result.texts == [" P0", " D1", " D2"]
                assert not result.done
                assert len(result.errors) == 1 and result.events[-1] is result.errors[0]
                assert result.errors[0]["error"]["type"] == "upstream_error"

                decode.behaviour = Behaviour(tokens=6, fail="hang", fail_after=2)
                result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                assert not result.done and result.errors[0]["error"]["code"] == "upstream_timeout"
        finally:
            await prefill.stop()
            await decode.stop()

    run(scenario)


def test_prefill_killed_during_a_run_fails_no_request(etcd, prefix) -> None:
    async def scenario() -> None:
        victim = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, label="V", lease_ttl=1,
                                  behaviour=Behaviour(tokens=4, token_interval=0.005)).start()
        survivor = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix,
                                    behaviour=Behaviour(tokens=4, token_interval=0.005)).start()
        decode = await FakeWorker("decode", etcd=etcd.address, prefix=prefix,
                                  behaviour=Behaviour(tokens=4, token_interval=0.005)).start()
        try:
            async with RunningProxy(_flags(etcd.address, prefix)) as proxy, aiohttp.ClientSession() as session:
                await _usable(proxy, "prefill", 2)
                results = []

                async def client(count: int) -> None:
                    for _ in range(count):
                        results.append(await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"}))

                clients = [asyncio.create_task(client(25)) for _ in range(8)]
                await wait_until(lambda: len(victim.requests) >= 5, what="victim serving")
                await victim.kill()
                await asyncio.gather(*clients)
                registry = proxy.state.registry
                assert registry is not None
                await wait_until(lambda: len(registry.workers("prefill")) == 1, 4.0, "lease expiry removing victim")

                assert len(results) == 200
                assert all(r.status == 200 for r in results), [r.raw for r in results if r.status != 200][:2]
                assert not [r for r in results if r.errors], "a 200 stream carried an error"
                assert all(r.done and len(r.texts) == 4 for r in results)
        finally:
            for worker in (victim, survivor, decode):
                await worker.stop()

    run(scenario, deadline=30)


def test_unhealthy_worker_leaves_the_pool_and_returns(etcd, prefix) -> None:
    async def scenario() -> None:
        prefill = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=2)).start()
        decode = await FakeWorker("decode", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=2)).start()
        try:
            async with RunningProxy(_flags(etcd.address, prefix, "--pair-wait-timeout", "0.1")) as proxy, \
                    aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                decode.healthy = False
                await _usable(proxy, "decode", 0)
                async with session.get(proxy.url + "/ready") as r:
                    assert r.status == 503
                async with session.post(proxy.url + "/v1/completions", json={"prompt": "x"}) as r:
                    assert r.status == 503
                assert len(decode.requests) == 0
                decode.healthy = True
                await wait_ready(session, proxy.url)
                result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                assert result.status == 200 and result.done
        finally:
            await prefill.stop()
            await decode.stop()

    run(scenario)


def test_etcd_restart_keeps_serving_and_resumes_discovery(private_etcd, prefix) -> None:
    etcd = private_etcd

    async def scenario() -> None:
        prefill = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=2)).start()
        decode = await FakeWorker("decode", etcd=etcd.address, prefix=prefix, behaviour=Behaviour(tokens=2)).start()
        late: FakeWorker | None = None
        try:
            async with RunningProxy(_flags(etcd.address, prefix)) as proxy, aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                discovery = proxy.state.discovery
                assert discovery is not None
                await asyncio.get_running_loop().run_in_executor(None, etcd.stop)
                # Known workers keep serving while etcd is away.
                for _ in range(3):
                    result = await post_stream(session, proxy.url + "/v1/completions", {"prompt": "x"})
                    assert result.status == 200 and result.done
                resyncs_before = discovery.resyncs
                await asyncio.get_running_loop().run_in_executor(None, etcd.start)
                await wait_until(lambda: discovery.resyncs > resyncs_before, 5.0, "re-read after etcd came back")
                late = await FakeWorker("prefill", etcd=etcd.address, prefix=prefix, label="L",
                                        behaviour=Behaviour(tokens=2)).start()
                await _usable(proxy, "prefill", 2, timeout=5.0)
                await late.stop()
                await _usable(proxy, "prefill", 1, timeout=5.0)
        finally:
            for worker in (prefill, decode, late):
                if worker is not None:
                    await worker.stop()

    run(scenario, deadline=30)
