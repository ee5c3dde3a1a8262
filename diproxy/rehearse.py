"""Rehearsal on loopback: etcd, the proxy, two fake prefill workers and one fake decode worker; one streaming
completion goes through and the flow (chosen pair, request ids, chunks) is printed. Everything stops at the end."""

from __future__ import annotations

import asyncio
import sys

import aiohttp

from diproxy.testing.etcd_server import EtcdMissing, EtcdServer, etcd_binary
from diproxy.testing.fake_worker import Behaviour, FakeWorker
from diproxy.testing.harness import RunningProxy

DEADLINE_SECONDS = 30.0


async def _rehearse(etcd: EtcdServer) -> int:
    behaviour = Behaviour(tokens=6, token_interval=0.02)
    workers = [FakeWorker("prefill", label="P1-", etcd=etcd.address, behaviour=behaviour),
               FakeWorker("prefill", label="P2-", etcd=etcd.address, behaviour=behaviour),
               FakeWorker("decode", label="D-", etcd=etcd.address, behaviour=behaviour)]
    proxy = RunningProxy(["--etcd", etcd.address, "--health-interval", "0.2", "--pair-wait-timeout", "5"])
    try:
        for worker in workers:
            await worker.start()
            print(f"worker  {worker.role:<8} {worker.address}  etcd key {worker.etcd_key}")
        await proxy.start()
        print(f"proxy   {proxy.url}  (etcd {etcd.address})")
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                async with session.get(proxy.url + "/ready") as reply:
                    if reply.status == 200:
                        print(f"ready   {await reply.text()}")
                        break
                await asyncio.sleep(0.05)
            body = {"model": "fake-model", "prompt": "Hello", "max_tokens": 6, "stream": True}
            print(f"\nclient  POST /v1/completions {body}")
            async with session.post(proxy.url + "/v1/completions", json=body) as reply:
                print(f"client  <- HTTP {reply.status}, X-Request-Id {reply.headers.get('X-Request-Id')}")
                async for line in reply.content:
                    if line.strip():
                        print(f"client  <- {line.decode().rstrip()}")
                status = reply.status
        print()
        for worker in workers:
            for received in worker.requests:
                print(f"{worker.role:<8}{worker.address} got X-Request-Id {received.request_id} "
                      f"max_tokens={received.body.get('max_tokens')}")
        picked = [w for w in workers if w.requests]
        print(f"\npair    prefill {next(w.address for w in picked if w.role == 'prefill')} -> "
              f"decode {next(w.address for w in picked if w.role == 'decode')}")
        return 0 if status == 200 else 1
    finally:
        await proxy.stop()
        for worker in workers:
            await worker.stop()


def main() -> int:
    try:
        etcd_binary()
    except EtcdMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    with EtcdServer() as etcd:
        try:
            return asyncio.run(asyncio.wait_for(_rehearse(etcd), DEADLINE_SECONDS))
        except asyncio.TimeoutError:
            print(f"rehearsal did not finish within {DEADLINE_SECONDS}s", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
