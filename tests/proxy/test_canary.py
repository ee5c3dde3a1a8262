"""The correctness canary on loopback: real etcd, fake prefill/decode workers that speak NIXL's kv_transfer_params
and answer token ids, one of them told to corrupt its KV or fail its transfers."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.stub import ANY, Stubber

from diproxy import canary
from diproxy.canary import Endpoint, rotation
from diproxy.etcd_access import EtcdAccess
from diproxy.etcd_gateway import EtcdError
from diproxy.shipper.prometheus_text import parse
from diproxy.testing.etcd_cluster import ROOT_PASSWORD, EtcdCluster
from diproxy.testing.faults import Faults, KvFakeWorker
from tests.proxy.conftest import run
from tests.tools import require

PERIOD = 300.0


class Recorder:
    """A CloudWatch client that keeps what the canary publishes."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def put_metric_data(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {}


def args(etcd: str, prefix: str, **extra: Any) -> Any:
    argv = ["--model", "fake-model", "--etcd", etcd, "--etcd-prefix", prefix, "--deployment", "loop",
            "--period", str(PERIOD)]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return canary.parse_args(argv, {})


async def start(etcd: str, prefix: str, faults: dict[str, Faults] | None = None) -> dict[str, KvFakeWorker]:
    workers = {}
    for name in ("p0", "p1", "d0", "d1"):
        role = "prefill" if name.startswith("p") else "decode"
        workers[name] = await KvFakeWorker(role, etcd=etcd, prefix=prefix, label=name.upper(),
                                           faults=(faults or {}).get(name)).start()
    return workers


async def stop(workers: dict[str, KvFakeWorker]) -> None:
    for worker in workers.values():
        await worker.stop()


def published(recorder: Recorder, name: str) -> list[dict[str, Any]]:
    return [d for call in recorder.calls for d in call["MetricData"] if d["MetricName"] == name]


def test_rotation_checks_every_endpoint_each_run_and_every_pair_within_min_p_d_runs() -> None:
    prefills = [Endpoint("10.0.0.1", 8000 + i) for i in range(3)]
    decodes = [Endpoint("10.0.0.2", 8000 + i) for i in range(2)]
    seen = set()
    for turn in range(2):
        pairs = rotation(prefills, decodes, turn)
        assert len(pairs) == 3
        assert {p.prefill for p in pairs} == set(prefills) and {p.decode for p in pairs} == set(decodes)
        seen |= {(p.prefill, p.decode) for p in pairs}
    assert len(seen) == 6
    assert rotation(prefills, [], 0) == []


def test_a_healthy_fleet_matches_and_publishes_one_match_per_pair(etcd, prefix) -> None:
    async def scenario() -> None:
        workers = await start(etcd.address, prefix)
        recorder, out = Recorder(), io.StringIO()
        try:
            code = await canary.main_async(args(etcd.address, prefix), client=lambda region: recorder,
                                           clock=lambda: 10 * PERIOD, out=out)
        finally:
            await stop(workers)
        assert code == 0, out.getvalue()
        assert [d["Value"] for d in published(recorder, "CanaryMatch")] == [1.0, 1.0]
        assert published(recorder, "CanaryMismatches")[0]["Value"] == 0.0
        assert published(recorder, "CanaryChecks")[0]["Value"] == 2.0
        # Both legs went as the proxy sends them: the prefill asked for a remote decode with one token; the decode
        # read the blocks the prefill held (the fake checks remote_host, port and block ids) and counted the bytes.
        for name in ("p0", "p1"):
            (asked,) = [r.body for r in workers[name].requests]
            assert asked["max_tokens"] == 1 and asked["kv_transfer_params"]["do_remote_decode"] is True
            assert workers[name].kv_reads == 1
        assert workers["d0"].bytes_transferred > 0 and workers["d1"].bytes_transferred > 0
        # The reference leg: each decode once, without kv_transfer_params.
        for name in ("d0", "d1"):
            plain = [r.body for r in workers[name].requests if "kv_transfer_params" not in r.body]
            assert len(plain) == 1 and plain[0]["temperature"] == 0 and plain[0]["seed"] == canary.SEED

    run(scenario)


def test_a_decode_returning_wrong_tokens_after_a_transfer_is_caught_in_one_run(etcd, prefix) -> None:
    async def scenario() -> None:
        workers = await start(etcd.address, prefix, {"d1": Faults(wrong_tokens=True)})
        recorder, out = Recorder(), io.StringIO()
        try:
            code = await canary.main_async(args(etcd.address, prefix), client=lambda region: recorder,
                                           clock=lambda: 7 * PERIOD + 1, out=out)
        finally:
            await stop(workers)
        assert code == 1
        lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
        bad = [line for line in lines if line["outcome"] == "mismatch"]
        assert len(bad) == 1 and bad[0]["pair"].endswith(workers["d1"].address)
        assert bad[0]["disaggregated"] != bad[0]["local"]
        matches = {d["Dimensions"][1]["Value"]: d["Value"] for d in published(recorder, "CanaryMatch")}
        assert matches[bad[0]["pair"]] == 0.0 and sorted(matches.values()) == [0.0, 1.0]
        assert published(recorder, "CanaryMismatches")[0]["Value"] == 1.0

    run(scenario)


def test_a_failed_transfer_is_an_error_and_counted_on_the_decodes_metrics(etcd, prefix) -> None:
    async def scenario() -> None:
        workers = await start(etcd.address, prefix, {"d0": Faults(fail_transfer=True)})
        recorder, out = Recorder(), io.StringIO()
        try:
            code = await canary.main_async(args(etcd.address, prefix), client=lambda region: recorder,
                                           clock=lambda: 0.0, out=out)
            import aiohttp
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{workers['d0'].address}/metrics") as reply:
                    scrape = parse(await reply.text())
        finally:
            await stop(workers)
        assert code == 1
        assert published(recorder, "CanaryErrors")[0]["Value"] == 1.0
        assert sum(s.value for s in scrape.family("vllm:nixl_num_failed_transfers_total")) == 1.0
        assert workers["d0"].bytes_transferred == 0

    run(scenario)


def test_a_saturated_pair_is_skipped_without_a_request(etcd, prefix) -> None:
    async def scenario() -> None:
        workers = await start(etcd.address, prefix)
        workers["d0"].waiting = 3
        recorder, out = Recorder(), io.StringIO()
        try:
            code = await canary.main_async(args(etcd.address, prefix), client=lambda region: recorder,
                                           clock=lambda: 0.0, out=out)
        finally:
            await stop(workers)
        assert code == 0
        assert published(recorder, "CanarySkipped")[0]["Value"] == 1.0
        assert not workers["d0"].requests
        assert published(recorder, "CanaryChecks")[0]["Value"] == 1.0

    run(scenario)


def test_what_the_canary_publishes_is_a_valid_put_metric_data_call() -> None:
    results = [canary.PairResult("10.0.0.1:8000>10.0.0.2:8000", "match"),
               canary.PairResult("10.0.0.1:8001>10.0.0.2:8001", "mismatch"),
               canary.PairResult("10.0.0.1:8002>10.0.0.2:8000", "skipped")]
    data = canary.datums("prod", results, datetime(2026, 12, 1, tzinfo=timezone.utc))
    client = boto3.session.Session(region_name="us-east-2", aws_access_key_id="x",
                                   aws_secret_access_key="y").client("cloudwatch")
    with Stubber(client) as stub:
        # The Stubber checks the call against CloudWatch's API model (names, types, limits).
        stub.add_response("put_metric_data", {}, {"Namespace": "DiStack/Proxy", "MetricData": ANY})
        client.put_metric_data(Namespace="DiStack/Proxy", MetricData=data)
    assert {d["MetricName"] for d in data} == set(canary.PUBLISHED)
    for d in data:
        assert tuple(x["Name"] for x in d["Dimensions"]) == canary.PUBLISHED[d["MetricName"]]


def test_the_canary_reads_every_member_proxy_env_lists(etcd, prefix) -> None:
    # proxy.env's DIPROXY_ETCD lists this host's member, then every member: a first member down is passed over.
    async def scenario() -> None:
        workers = await start(etcd.address, prefix)
        try:
            async with aiohttp.ClientSession() as session:
                prefills, decodes = await canary.registered(
                    session, EtcdAccess.of_environment(f"127.0.0.1:1,{etcd.address}", {}), prefix)
        finally:
            await stop(workers)
        assert len(prefills) == 2 and len(decodes) == 2

    run(scenario)


def test_the_canary_reads_a_secured_registry_with_the_proxys_tls_files_and_user(prefix, tmp_path) -> None:
    # With etcd secured (client certificates and users), the canary reads as the proxy does, from the DIPROXY_ETCD_*
    # files proxy.env names; without them it cannot read the registry at all.
    require("etcd")

    async def scenario(cluster: EtcdCluster) -> None:
        password = tmp_path / "password"
        password.write_text(ROOT_PASSWORD)
        env = {"DIPROXY_ETCD_CA_FILE": str(cluster.pki["ca"]), "DIPROXY_ETCD_CERT_FILE": str(cluster.pki["cert"]),
               "DIPROXY_ETCD_KEY_FILE": str(cluster.pki["key"]), "DIPROXY_ETCD_USER": "root",
               "DIPROXY_ETCD_PASSWORD_FILE": str(password)}
        members = ",".join("%s:%d" % m.address for m in cluster.members)
        async with aiohttp.ClientSession() as session:
            secured = EtcdAccess.of_environment(members, env)
            await secured.gateway(session).put(prefix + "prefill/10.0.1.5/8000", "")
            await secured.gateway(session).put(prefix + "decode/10.0.1.6/8000", "")
            prefills, decodes = await canary.registered(session, secured, prefix)
            assert (prefills, decodes) == ([canary.Endpoint("10.0.1.5", 8000)], [canary.Endpoint("10.0.1.6", 8000)])
            with pytest.raises(EtcdError):
                await canary.registered(session, EtcdAccess.of_environment(members, {}), prefix)

    with EtcdCluster(tls=True, auth=True) as cluster:
        run(lambda: scenario(cluster))

