"""The proxy's /metrics become CloudWatch metrics: per-interval counts, latency distributions, pool sizes, the per-role
load averaged over the interval, and ProxyUp; a proxy restart or a failed publish neither loses nor double-counts."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime, timezone

import aiohttp

from diproxy.handoffs import HandoffTracker
from diproxy.metrics import ProxyMetrics
from diproxy.protocols.lmcache import LMCacheProtocol
from diproxy.shipper.metric_data import RULES, MetricTranslator, published
from diproxy.shipper.prometheus_text import parse
from diproxy.shipper.service import run
from diproxy.testing.fake_worker import Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy
from tests.proxy.conftest import FAST_FLAGS, post_stream, wait_ready
from tests.shipper.conftest import metric_sum, shipper_settings

ROLES = ("prefill", "decode", "standard")

AT = datetime(2026, 11, 22, tzinfo=timezone.utc)
COMPLETIONS = "/v1/completions"


def _value(datums: list[dict], name: str, **dimensions: str) -> float | None:
    for datum in datums:
        dims = {d["Name"]: d["Value"] for d in datum["Dimensions"] if d["Name"] != "Deployment"}
        if datum["MetricName"] == name and dims == dimensions:
            return datum.get("Value")
    return None


def _proxy_metrics(monkeypatch, started: float, clock=time.monotonic, engine_metrics=None) -> ProxyMetrics:
    monkeypatch.setattr("diproxy.metrics.time.time", lambda: started)
    return ProxyMetrics(lambda: {("decode", "healthy"): 2.0, ("prefill", "unhealthy"): 1.0}, lambda: {},
                        load_roles=ROLES, clock=clock,
                        engine_metrics=LMCacheProtocol().metrics if engine_metrics is None else engine_metrics)


def test_counters_are_sent_as_deltas_and_a_failed_publish_folds_into_the_next(monkeypatch) -> None:
    proxy = _proxy_metrics(monkeypatch, 1000.0)
    translator = MetricTranslator("prod")
    proxy.requests.inc(COMPLETIONS, "200", amount=5)
    proxy.requests.inc(COMPLETIONS, "503")
    first = translator.translate(parse(proxy.render()), AT)
    assert (_value(first, "Requests"), _value(first, "ServerErrorResponses"), _value(first, "ClientErrorResponses")) \
        == (6, 1, 0)
    assert _value(first, "ProxyUp") == 1
    translator.commit()

    proxy.requests.inc(COMPLETIONS, "200", amount=2)
    assert _value(translator.translate(parse(proxy.render()), AT), "Requests") == 2
    # Not committed (the publish failed): the next interval carries these two as well.
    proxy.requests.inc(COMPLETIONS, "200")
    assert _value(translator.translate(parse(proxy.render()), AT), "Requests") == 3


def test_a_restarted_proxy_counts_from_zero_even_when_its_counters_passed_the_old_ones(monkeypatch) -> None:
    translator = MetricTranslator("prod")
    before = _proxy_metrics(monkeypatch, 1000.0)
    before.requests.inc(COMPLETIONS, "200", amount=8)
    translator.translate(parse(before.render()), AT)
    translator.commit()
    after = _proxy_metrics(monkeypatch, 2000.0)
    after.requests.inc(COMPLETIONS, "200", amount=10)
    assert _value(translator.translate(parse(after.render()), AT), "Requests") == 10


def test_histograms_become_bucket_values_with_counts_in_milliseconds(monkeypatch) -> None:
    proxy = _proxy_metrics(monkeypatch, 1000.0)
    for seconds in (0.003, 0.004, 0.2, 400.0):
        proxy.ttft.observe(seconds, COMPLETIONS)
    proxy.ttft.observe(0.2, "/v1/chat/completions")
    (ttft,) = [d for d in MetricTranslator("prod").translate(parse(proxy.render()), AT)
               if d["MetricName"] == "TimeToFirstToken"]
    # Buckets (0, 5 ms], (100 ms, 250 ms] and (300 s, +Inf), both endpoints summed.
    assert (ttft["Values"], ttft["Counts"], ttft["Unit"]) == ([2.5, 175.0, 300000.0], [2, 2, 1], "Milliseconds")


def test_the_load_is_the_intervals_average_requests_per_healthy_endpoint(monkeypatch) -> None:
    now = [0.0]
    proxy = _proxy_metrics(monkeypatch, 1000.0, clock=lambda: now[0])
    translator = MetricTranslator("prod")
    load = proxy.load
    load.set_endpoints({"prefill": 2, "decode": 0})  # no healthy decode: counted as one, so demand still shows
    for _ in range(4):
        load.move(None, "prefill")
    now[0] = 30.0
    for _ in range(4):
        load.move("prefill", "decode")
    now[0] = 45.0
    for _ in range(4):
        load.move("decode", None)
    now[0] = 60.0
    first = translator.translate(parse(proxy.render()), AT)
    # Prefill: 4 requests for 30 s of 60 on 2 endpoints; decode: 4 for 15 s of 60 on "1".
    assert _value(first, "PrefillRequestsPerEndpoint", Role="prefill") == 1.0
    assert _value(first, "DecodeStreamsPerEndpoint", Role="decode") == 1.0
    assert _value(first, "DecodeStreamsPerEndpoint", Role="standard") == 0.0
    translator.commit()
    load.set_endpoints({"prefill": 2, "decode": 4})
    load.move(None, "decode")
    now[0] = 120.0  # the next minute counts from the last published one, with the endpoints of that minute
    assert _value(translator.translate(parse(proxy.render()), AT), "DecodeStreamsPerEndpoint", Role="decode") == 0.25
    assert 'diproxy_load_per_endpoint{role="decode"} 0.25' in proxy.render().splitlines()


def test_pool_gauges_report_zero_for_a_role_with_no_worker_in_that_state(monkeypatch) -> None:
    datums = MetricTranslator("prod").translate(parse(_proxy_metrics(monkeypatch, 1.0).render()), AT)
    assert _value(datums, "HealthyWorkers", Role="decode") == 2
    assert _value(datums, "HealthyWorkers", Role="prefill") == 0
    assert _value(datums, "UnhealthyWorkers", Role="prefill") == 1
    assert all(d["Dimensions"][0] == {"Name": "Deployment", "Value": "prod"} for d in datums)


def test_a_failed_scrape_reports_the_proxy_down_and_keeps_the_baseline(monkeypatch) -> None:
    proxy = _proxy_metrics(monkeypatch, 1000.0)
    translator = MetricTranslator("prod")
    proxy.requests.inc(COMPLETIONS, "200", amount=3)
    translator.translate(parse(proxy.render()), AT)
    translator.commit()
    down = translator.translate(None, AT)
    assert [(d["MetricName"], d["Value"]) for d in down] == [("ProxyUp", 0.0)]
    translator.commit()
    proxy.requests.inc(COMPLETIONS, "200")
    assert _value(translator.translate(parse(proxy.render()), AT), "Requests") == 1


def test_every_rule_reads_a_family_the_proxy_exposes(monkeypatch) -> None:
    (transfer_timeouts,) = LMCacheProtocol().metrics  # engine lmcache's own counter
    handoffs = HandoffTracker()  # engine nixl's
    proxy = _proxy_metrics(monkeypatch, 1.0, engine_metrics=(transfer_timeouts, *handoffs.metrics))
    proxy.requests.inc(COMPLETIONS, "200")
    proxy.errors.inc("upstream_connect")
    proxy.retries.inc()
    transfer_timeouts.inc()
    handoffs.open("10.0.0.1:8000").close(started=True)
    handoffs.open("10.0.0.1:8000")
    handoffs.releases.inc("released")
    proxy.ttft.observe(0.1, COMPLETIONS)
    proxy.latency.observe(0.1, COMPLETIONS)
    proxy.inter_token.observe(0.02)
    scrape = parse(proxy.render())
    for rule in RULES:
        for name in filter(None, (rule.family, rule.per)):
            family = name + ("_bucket" if rule.kind == "histogram" else "")
            assert scrape.family(family), f"{rule.metric} reads {family}, which the proxy does not expose"
            assert scrape.types[family] == {"ratio": "counter"}.get(rule.kind, rule.kind)
    catalog = {(metric.name, metric.fixed): metric for metric in published()}
    assert len(catalog) == len(RULES) + 1 and catalog["ProxyUp", ()].dimensions == ("Deployment",)
    assert catalog["DecodeStreamsPerEndpoint", (("Role", "standard"),)].dimensions == ("Deployment", "Role")
    catalog = {metric.name: metric for metric in published()}
    assert catalog["InterTokenLatency"].kind == "histogram" and catalog["InterTokenLatency"].unit == "Milliseconds"
    assert catalog["Errors"].dimensions == ("Deployment", "Kind")


def test_a_running_proxy_s_traffic_arrives_in_cloudwatch_and_each_run_sends_only_its_interval(cloudwatch,
                                                                                              tmp_path) -> None:
    async def scenario() -> None:
        # Tokens 5 ms apart reach the proxy in reads of their own, so each stream has gaps to measure.
        worker = await FakeWorker("standalone", behaviour=Behaviour(tokens=3, token_interval=0.005)).start()
        try:
            async with RunningProxy(["--mode", "standard", "--endpoint", worker.address, *FAST_FLAGS]) as proxy, \
                    aiohttp.ClientSession() as session:
                await wait_ready(session, proxy.url)
                for _ in range(3):
                    assert (await post_stream(session, proxy.url + COMPLETIONS, {"prompt": "x"})).status == 200
                async with session.post(proxy.url + COMPLETIONS, data=b"not json") as reply:
                    assert reply.status == 400
                settings = shipper_settings(tmp_path, "--once", metrics_url=proxy.url + "/metrics")
                assert await run(settings) == 0
                assert metric_sum(cloudwatch, "Requests") == 4
                assert metric_sum(cloudwatch, "ClientErrorResponses") == 1
                assert metric_sum(cloudwatch, "ServerErrorResponses") == 0
                assert metric_sum(cloudwatch, "Errors", Kind="bad_request") == 1
                assert metric_sum(cloudwatch, "TimeToFirstToken", "SampleCount") == 3
                gaps = proxy.state.metrics.inter_token.count()
                assert gaps > 0 and metric_sum(cloudwatch, "InterTokenLatency", "SampleCount") == gaps
                assert metric_sum(cloudwatch, "RequestDuration", "SampleCount") == 4
                assert metric_sum(cloudwatch, "DecodeStreamsPerEndpoint", "Maximum", Role="standard") > 0
                assert metric_sum(cloudwatch, "PrefillRequestsPerEndpoint", "SampleCount", Role="prefill") is None
                assert metric_sum(cloudwatch, "HealthyWorkers", "Maximum", Role="standalone") == 1
                assert metric_sum(cloudwatch, "ProxyUp", "Minimum") == 1

                for _ in range(2):
                    await post_stream(session, proxy.url + COMPLETIONS, {"prompt": "x"})
                assert await run(settings) == 0  # a new process would start from the saved baseline too
                assert metric_sum(cloudwatch, "Requests") == 6
                assert metric_sum(cloudwatch, "TimeToFirstToken", "SampleCount") == 5
        finally:
            await worker.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_the_service_publishes_each_interval_and_stops_on_sigterm(cloudwatch, tmp_path) -> None:
    settings = shipper_settings(tmp_path, "--interval", "0.05")

    async def scenario() -> int:
        service = asyncio.create_task(run(settings))
        deadline = time.monotonic() + 10
        # No proxy answers on the metrics URL, so each interval reports it as down.
        while not (metric_sum(cloudwatch, "ProxyUp", "SampleCount") or 0) >= 2:
            assert time.monotonic() < deadline, "no two ProxyUp data points"
            await asyncio.sleep(0.02)
        assert metric_sum(cloudwatch, "ProxyUp", "Maximum") == 0
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(service, 5)

    assert asyncio.run(scenario()) == 0
