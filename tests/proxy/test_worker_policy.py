"""A registry anyone in the worker subnets could write: the proxy takes only IPv4 literals inside the worker networks,
on a vLLM port, up to a bounded count, and counts what it refuses."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from diproxy.etcd_gateway import EtcdGateway
from diproxy.registry import EtcdDiscovery, WorkerRegistry
from diproxy.worker_policy import WorkerPolicy
from tests.proxy.conftest import run, wait_until


def test_only_ipv4_literals_in_the_worker_networks_on_a_vllm_port_join_up_to_the_limit() -> None:
    refused: Counter[str] = Counter()
    policy = WorkerPolicy(["10.0.1.0/24"], max_workers=2, on_refused=lambda why: refused.update([why]))
    assert policy.admits(("prefill", "10.0.1.5", 8000), registered=0)
    assert not policy.admits(("prefill", "evil.example.com", 8000), registered=0)
    assert not policy.admits(("decode", "10.0.2.5", 8000), registered=0)
    assert not policy.admits(("decode", "::1", 8000), registered=0)
    assert not policy.admits(("decode", "10.0.1.6", 22), registered=0)
    assert not policy.admits(("decode", "10.0.1.6", 8000), registered=2)
    assert refused == {"worker_not_ipv4": 2, "worker_outside_networks": 1, "worker_bad_port": 1,
                       "workers_over_limit": 1}


def test_the_proxy_ignores_rogue_and_junk_registrations_in_etcd(etcd, prefix) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            gateway = EtcdGateway(session, *etcd.address.split(":")[:1], int(etcd.address.rsplit(":", 1)[1]))
            await gateway.put(prefix + "prefill/10.0.1.5/8000", "")
            await gateway.put(prefix + "decode/10.0.1.6/8000", "")
            await gateway.put(prefix + "prefill/attacker.example.com/8000", "")  # a hostname
            await gateway.put(prefix + "decode/192.168.7.7/8000", "")  # outside the worker subnet
            for i in range(200):  # junk: more than the limit allows
                await gateway.put(prefix + f"decode/10.0.1.{i % 250}/{9000 + i}", "")
            refused: Counter[str] = Counter()
            registry = WorkerRegistry(session, health_interval=60, health_timeout=1)
            policy = WorkerPolicy(["10.0.1.0/24"], max_workers=50, on_refused=lambda why: refused.update([why]))
            discovery = EtcdDiscovery(registry, gateway, prefix, resync_interval=60, retry_interval=0.05, policy=policy)
            task = asyncio.create_task(discovery.run())
            try:
                await wait_until(lambda: discovery.resyncs >= 1, what="the first read")
                hosts = {w.host for w in registry.workers()}
                assert len(registry.workers()) == 50
                assert "attacker.example.com" not in hosts and "192.168.7.7" not in hosts
                assert refused["worker_not_ipv4"] == 1 and refused["worker_outside_networks"] == 1
                assert refused["workers_over_limit"] == 202 - 50
                await gateway.put(prefix + "decode/192.168.7.8/8000", "")  # a rogue key arriving by the watch
                await wait_until(lambda: refused["worker_outside_networks"] == 2, what="the watched key refused")
                assert "192.168.7.8" not in {w.host for w in registry.workers()}
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await registry.close()

    run(scenario)
