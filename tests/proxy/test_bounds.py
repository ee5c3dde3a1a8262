"""The proxy's bounds, through the running proxy on loopback with fake workers and a real etcd: malformed requests are
a 400 naming the problem (no traceback, no worker called), bodies past the limit derived from max_model_len a 413,
requests past the in-flight caps a 429 with Retry-After, registrations outside the worker networks ignored, /metrics
for the local scraper or the key only, and the API key re-read without a restart."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal

import aiohttp
import pytest

from diproxy.auth import ApiKeySource, load_api_key
from diproxy.config import parse_settings, request_body_limit
from diproxy.testing.fake_worker import Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy
from tests.proxy.conftest import di_flags, di_stack, post_stream, run, wait_until

MALFORMED = [
    pytest.param(b'{"prompt": "x"}', "application/json; charset=x-no-such-charset", "invalid_charset", id="charset"),
    pytest.param(b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json", "invalid_json",
                 id="deep-json"),
    pytest.param(b'{"prompt": "x", "temperature": NaN}', "application/json", "invalid_json", id="nan"),
    pytest.param(b'{"prompt": "x", "top_p": Infinity}', "application/json", "invalid_json", id="infinity"),
    pytest.param(b'{"prompt": "x", "stream": "false"}', "application/json", "stream must be true or false",
                 id="stream-string"),
    pytest.param(b'{"prompt": "x", "n": 2}', "application/json", "one KV transfer per request", id="n"),
    pytest.param(b'{"prompt": "x", "best_of": 3}', "application/json", "best_of 3 is above 1", id="best_of"),
    pytest.param(b'{"prompt": "x", "max_tokens": 9000}', "application/json", "above the model's max_model_len 8192",
                 id="max-tokens"),
    pytest.param(b'{"prompt": [1, -2]}', "application/json", "prompt must be", id="token-ids"),
    pytest.param(b'{"prompt": "x", "model": "../../etc"}', "application/json", "model must be a model id",
                 id="model-id"),
    pytest.param(b"[1, 2]", "application/json", "invalid_json", id="not-an-object"),
    pytest.param(b"\xff\xfe", "application/json", "invalid_encoding", id="not-utf8"),
]


@pytest.mark.parametrize("raw,content_type,words", MALFORMED)
def test_each_malformed_request_is_a_400_naming_it_and_reaches_no_worker(etcd, prefix, caplog, raw, content_type,
                                                                         words) -> None:
    async def scenario() -> None:
        async with di_stack("nixl", etcd.address, prefix, [Behaviour()], [Behaviour()]) as (p, d, proxy, session):
            async with session.post(proxy.url + "/v1/completions", data=raw,
                                    headers={"Content-Type": content_type}) as reply:
                assert reply.status == 400
                error = (await reply.json())["error"]
            assert words in error["message"] or words == error["code"], error
            assert "Traceback" not in error["message"]
            assert p[0].requests == [] and d[0].requests == []
            assert proxy.state.metrics.errors.value("bad_request") == 1
            assert proxy.state.admission.in_flight == 0

    with caplog.at_level(logging.DEBUG):
        run(scenario)
    assert not [r for r in caplog.records if r.exc_info], "a malformed request logged a traceback"


def test_the_body_limit_follows_max_model_len_and_is_a_413_in_the_api_shape(etcd, prefix) -> None:
    assert request_body_limit(parse_settings(["--etcd", "e:1"], env={})) == 8192 * 32 + 64 * 1024  # 320 KiB
    assert request_body_limit(parse_settings(["--etcd", "e:1", "--max-model-len", "131072"], env={})) < 5 * 2**20
    assert request_body_limit(parse_settings(["--etcd", "e:1", "--max-request-bytes", "4096"], env={})) == 4096

    async def scenario() -> None:
        async with di_stack("nixl", etcd.address, prefix, [Behaviour()], [Behaviour()],
                            "--max-model-len", "1024") as (p, d, proxy, session):
            limit = 1024 * 32 + 64 * 1024
            fits = {"prompt": "y" * (limit - 1000), "max_tokens": 2}
            result = await post_stream(session, proxy.url + "/v1/completions", fits)
            assert result.status == 200 and result.done
            async with session.post(proxy.url + "/v1/completions",
                                    json={"prompt": "y" * (limit + 1), "max_tokens": 2}) as reply:
                assert reply.status == 413
                assert (await reply.json())["error"]["code"] == "request_too_large"
            assert len(p[0].requests) == 1
            assert proxy.state.metrics.errors.value("request_too_large") == 1

    run(scenario)


def test_in_flight_caps_answer_429_with_retry_after_per_client_and_in_all(etcd, prefix) -> None:
    async def scenario() -> None:
        slow = Behaviour(tokens=1, first_token_delay=10.0)  # held until the client leaves
        async with di_stack("nixl", etcd.address, prefix, [slow], [Behaviour()], "--max-in-flight", "3",
                            "--max-in-flight-per-client", "2", "--retry-after", "7") as (p, d, proxy, session):
            url = proxy.url + "/v1/completions"
            admission = proxy.state.admission
            # A second client: another loopback address is another peer.
            other = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
            held = [asyncio.create_task(session.post(url, json={"prompt": "x"})) for _ in range(2)]
            try:
                await wait_until(lambda: admission.in_flight == 2, what="two requests of client 1 in flight")
                async with session.post(url, json={"prompt": "x"}) as reply:
                    assert reply.status == 429 and reply.headers["Retry-After"] == "7"
                    assert (await reply.json())["error"]["code"] == "client_at_capacity"
                held.append(asyncio.create_task(other.post(url, json={"prompt": "x"})))
                await wait_until(lambda: admission.in_flight == 3, what="client 2's request in flight")
                assert admission.clients() == 2
                async with other.post(url, json={"prompt": "x"}) as reply:
                    assert reply.status == 429 and reply.headers["Retry-After"] == "7"
                    assert (await reply.json())["error"]["code"] == "proxy_at_capacity"
                assert len(p[0].requests) == 3, "a refused request cost a prefill"
                # The exported gauge counts the admitted requests, not the refused ones.
                gauge = [line for line in proxy.state.metrics.render().splitlines()
                         if line.startswith("diproxy_in_flight_requests ")]
                assert [float(line.split()[1]) for line in gauge] == [3.0]
            finally:
                for task in held:
                    task.cancel()
                await asyncio.gather(*held, return_exceptions=True)
                await other.close()
            # The clients left: their places are free again.
            await wait_until(lambda: admission.in_flight == 0 and admission.clients() == 0, what="places freed")
            errors = proxy.state.metrics.errors
            assert errors.value("client_at_capacity") == 1 and errors.value("proxy_at_capacity") == 1

    run(scenario)


def test_registrations_outside_the_worker_networks_are_ignored_and_counted(etcd, prefix) -> None:
    async def scenario() -> None:
        workers = [await FakeWorker(role, etcd=etcd.address, prefix=prefix).start() for role in ("prefill", "decode")]
        try:
            async with RunningProxy(di_flags("nixl", etcd.address, prefix, "--worker-networks", "10.0.1.0/24")) \
                    as proxy:
                errors = proxy.state.metrics.errors
                await wait_until(lambda: errors.value("worker_outside_networks") == 2, what="both refused")
                assert proxy.state.registry is not None and proxy.state.registry.workers() == []
        finally:
            for worker in workers:
                await worker.stop()

    run(scenario)


def test_metrics_name_workers_only_to_the_local_scraper_or_with_the_key(etcd, prefix) -> None:
    async def scenario() -> None:
        async with di_stack("nixl", etcd.address, prefix, [Behaviour()], [Behaviour()]) as (p, d, proxy, session):
            async with session.get(proxy.url + "/metrics") as reply:  # the shipper on 127.0.0.1
                assert reply.status == 200 and f'worker="{p[0].address}"' in await reply.text()
            proxy.state.local_scrapers = ()  # now 127.0.0.1 is a peer like any other, and no key is configured
            async with session.get(proxy.url + "/metrics") as reply:
                assert reply.status == 403 and p[0].address not in await reply.text()

    run(scenario)

    async def with_key() -> None:
        async with di_stack("nixl", etcd.address, prefix, [Behaviour()], [Behaviour()]) as (p, d, proxy, session):
            proxy.state.keys.key = "k" * 40
            proxy.state.local_scrapers = ()
            async with session.get(proxy.url + "/metrics") as reply:
                assert reply.status == 403 and p[0].address not in await reply.text()
            async with session.get(proxy.url + "/metrics", headers={"Authorization": "Bearer wrong"}) as reply:
                assert reply.status == 403
            async with session.get(proxy.url + "/metrics", headers={"Authorization": "Bearer " + "k" * 40}) as reply:
                assert reply.status == 200 and f'worker="{p[0].address}"' in await reply.text()

    run(with_key)


def test_a_rotated_key_file_takes_effect_on_sighup_without_dropping_a_stream(etcd, prefix, tmp_path) -> None:
    key_file = tmp_path / "api-key"
    old, new = "o" * 40, "n" * 40
    key_file.write_text(old + "\n")

    async def scenario() -> None:
        workers = [await FakeWorker("prefill", etcd=etcd.address, prefix=prefix).start(),
                   await FakeWorker("decode", etcd=etcd.address, prefix=prefix,
                                    behaviour=Behaviour(tokens=3, token_interval=0.4)).start()]
        flags = di_flags("nixl", etcd.address, prefix, "--api-key-file", str(key_file),
                         "--api-key-reload-interval", "3600")
        try:
            async with RunningProxy(flags, api_key=load_api_key(None, str(key_file))) as proxy, \
                    aiohttp.ClientSession() as session:
                url = proxy.url + "/v1/completions"
                await wait_until(lambda: proxy.state.router is not None and proxy.state.router.has_capacity(),
                                 what="a usable pair")
                stream = asyncio.create_task(post_stream(session, url, {"prompt": "x"},
                                                         headers={"Authorization": f"Bearer {old}"}))
                await wait_until(lambda: workers[1].in_flight == 1 or stream.done(), what="the stream at decode")
                assert not stream.done(), stream.result()
                key_file.write_text(new + "\n")
                os.kill(os.getpid(), signal.SIGHUP)
                await wait_until(lambda: proxy.state.api_key == new, what="the key reloaded")
                async with session.post(url, json={"prompt": "x"}, headers={"Authorization": f"Bearer {old}"}) as r:
                    assert r.status == 401
                result = await stream
                assert result.status == 200 and result.done, "the stream admitted with the old key was dropped"
                result = await post_stream(session, url, {"prompt": "x"}, headers={"Authorization": f"Bearer {new}"})
                assert result.status == 200 and result.done
        finally:
            for worker in workers:
                await worker.stop()

    run(scenario)


def test_the_key_is_re_read_on_its_interval(etcd, prefix, tmp_path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("a" * 40)

    async def scenario() -> None:
        flags = di_flags("nixl", etcd.address, prefix, "--api-key-file", str(key_file),
                         "--api-key-reload-interval", "0.05")
        async with RunningProxy(flags, api_key="a" * 40) as proxy:
            key_file.write_text("b" * 40)
            await wait_until(lambda: proxy.state.api_key == "b" * 40, what="the key re-read")
            key_file.unlink()  # an unreadable source keeps the key in force
            reloads = proxy.state.keys.reloads
            await wait_until(lambda: proxy.state.keys.reloads > reloads + 1, what="two more reloads")
            assert proxy.state.api_key == "b" * 40

    run(scenario)


def test_a_rotated_secret_is_read_again_and_a_failed_read_keeps_the_key(monkeypatch) -> None:
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        secrets = boto3.client("secretsmanager", region_name="us-east-2")
        secrets.create_secret(Name="distack/key", SecretString=json.dumps({"api_key": "first"}))
        source = ApiKeySource(load_api_key("distack/key", None, "us-east-2"), "distack/key", None, "us-east-2")
        assert not source.reload() and source.key == "first"
        secrets.put_secret_value(SecretId="distack/key", SecretString=json.dumps({"api_key": "second"}))
        assert source.reload() and source.key == "second"
        secrets.delete_secret(SecretId="distack/key", ForceDeleteWithoutRecovery=True)
        assert not source.reload() and source.key == "second"
