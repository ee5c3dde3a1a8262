"""The proxy's etcd client against a real three-member cluster: a member that dies is passed over for the next one,
the watch that fed the registry resumes from another member, and a cluster with client TLS and auth is read only
with the CA and the credentials."""

from __future__ import annotations

import asyncio
import ssl
from typing import Iterator

import aiohttp
import pytest

from diproxy.etcd_gateway import EtcdCredentials, EtcdError, EtcdGateway, tls_context
from diproxy.registry import EtcdDiscovery, WorkerRegistry
from diproxy.testing.etcd_cluster import ROOT_PASSWORD, EtcdCluster
from tests.proxy.conftest import run, wait_until
from tests.tools import require


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    require("etcd")
    with EtcdCluster() as running:
        yield running


def gateway(session: aiohttp.ClientSession, cluster: EtcdCluster, **options) -> EtcdGateway:
    (first, *others) = [m.address for m in cluster.members]
    return EtcdGateway(session, *first, request_timeout=1.0, others=others, **options)


def test_a_dead_member_is_passed_over_and_the_registry_watch_resumes_from_another(cluster, prefix) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            client = gateway(session, cluster)
            await client.put(prefix + "prefill/10.0.1.5/8000", "")
            registry = WorkerRegistry(session, health_interval=60, health_timeout=1)
            discovery = EtcdDiscovery(registry, client, prefix, resync_interval=60, retry_interval=0.05)
            task = asyncio.create_task(discovery.run())
            try:
                await wait_until(lambda: len(registry.workers()) == 1, what="the first worker read")
                cluster.stop_member(cluster.members[0])  # the member the client (and its watch) used
                writer = gateway(session, cluster)
                await writer.put(prefix + "decode/10.0.1.6/8000", "")
                await wait_until(lambda: len(registry.workers()) == 2, what="the watch resumed on another member")
                kvs, _ = await writer.get_prefix(prefix)
                assert sorted(kv.key for kv in kvs) == [prefix + "decode/10.0.1.6/8000", prefix + "prefill/10.0.1.5/8000"]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await registry.close()

    run(scenario)


def test_with_every_member_down_the_error_names_each(cluster, prefix) -> None:
    async def scenario() -> None:
        for member in cluster.members:
            cluster.stop_member(member)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(EtcdError) as failed:
                await gateway(session, cluster).get_prefix(prefix)
        assert "no etcd member answered" in str(failed.value)
        assert all(f":{m.client_port}" in str(failed.value) for m in cluster.members)

    run(scenario)


def test_a_cluster_with_tls_and_auth_answers_only_verified_authenticated_clients(prefix) -> None:
    require("etcd")

    async def scenario(secured: EtcdCluster) -> None:
        # Mutual TLS: the members verify the client's certificate against the same CA (etcd's --trusted-ca-file);
        # the test PKI's one certificate serves both ends.
        tls = tls_context(str(secured.pki["ca"]), str(secured.pki["cert"]), str(secured.pki["key"]))
        root = EtcdCredentials("root", ROOT_PASSWORD)
        async with aiohttp.ClientSession() as session:
            trusted = gateway(session, secured, tls=tls, credentials=root)
            await trusted.put(prefix + "decode/10.0.1.6/8000", "")
            kvs, _ = await trusted.get_prefix(prefix)
            assert [kv.key for kv in kvs] == [prefix + "decode/10.0.1.6/8000"]
            with pytest.raises(EtcdError, match="user name is empty|permission denied|invalid auth token"):
                await gateway(session, secured, tls=tls).get_prefix(prefix)
            with pytest.raises(EtcdError, match="authentication failed"):
                await gateway(session, secured, tls=tls, credentials=EtcdCredentials("root", "wrong")).get_prefix(prefix)
            # A client that does not trust the cluster's CA never sends its credentials, and one without a client
            # certificate is refused by the members.
            for untrusted in (ssl.create_default_context(), tls_context(str(secured.pki["ca"]))):
                with pytest.raises(EtcdError, match="no etcd member answered"):
                    await gateway(session, secured, tls=untrusted, credentials=root).get_prefix(prefix)

    with EtcdCluster(tls=True, auth=True) as secured:
        run(lambda: scenario(secured))


def test_the_proxy_takes_every_member_and_its_etcd_access_from_flags_or_the_environment(tmp_path, capsys) -> None:
    from diproxy.config import HostPort, parse_settings
    from diproxy.etcd_access import EtcdAccess

    password = tmp_path / "etcd-password"
    password.write_text("s3cret\n")
    settings = parse_settings(["--etcd-user", "proxy", "--etcd-password-file", str(password)],
                              env={"DIPROXY_ETCD": "10.0.0.10:8989,10.0.0.11:8989,10.0.0.12:8989"})
    assert settings.etcd == HostPort("10.0.0.10", 8989)
    assert settings.etcd_others == (HostPort("10.0.0.11", 8989), HostPort("10.0.0.12", 8989))
    access = EtcdAccess.of_settings(settings).gateway_options()
    assert access["others"] == [("10.0.0.11", 8989), ("10.0.0.12", 8989)]
    assert access["credentials"] == EtcdCredentials("proxy", "s3cret") and "tls" not in access
    for argv, words in ((["--etcd", "a:1", "--etcd-user", "proxy"], "--etcd-user and --etcd-password-file go together"),
                        (["--etcd", "a:1", "--etcd-cert-file", "c.pem"], "--etcd-cert-file needs --etcd-ca-file"),
                        (["--etcd", "a:1,b"], "expected HOST:PORT")):
        with pytest.raises(SystemExit):
            parse_settings(argv, env={})
        assert words in capsys.readouterr().err
