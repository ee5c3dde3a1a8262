"""Minimal etcd v3 client over the JSON gateway (HTTP or HTTPS): range, watch, put and leases; keys and values are
base64. It speaks to every member of a cluster, moving to the next member when one is down, and authenticates with
etcd's user/password auth when credentials are given.

Why not an etcd client library: the proxy needs these six calls and the watch, over the gateway every etcd 3.5
serves (https://etcd.io/docs/v3.5/dev-guide/api_grpc_gateway/); the maintained Python clients speak gRPC and would
bring grpcio and protobuf onto the control host for them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

import aiohttp


class EtcdError(Exception):
    """The etcd gateway answered with an error or an unexpected payload."""


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def prefix_range_end(prefix: str) -> bytes:
    """The smallest key greater than every key starting with prefix (etcd's prefix convention)."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1])
    return b"\0"


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    key: str
    value: str
    revision: int


class WatchCompacted(EtcdError):
    """The requested start revision was compacted: the caller must re-read the whole range."""


@dataclass(frozen=True)
class EtcdCredentials:
    """An etcd user (https://etcd.io/docs/v3.5/op-guide/authentication/rbac/): the proxy's user may only read the
    registry prefix, a worker's may only write it."""

    user: str
    password: str


# Errors that mean "this member cannot answer now", so the next member is tried: refused or reset connections, time-
# outs, and a member without a leader or shutting down (HTTP 503 from the gateway).
_MEMBER_DOWN = (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError)
# etcd's answer to an expired or revoked auth token ("etcdserver: invalid auth token"): authenticate again once.
_INVALID_TOKEN = "invalid auth token"


def tls_context(ca_file: str, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """Verify the members' certificates against CA_FILE; present a client certificate where etcd asks for one
    (--client-cert-auth)."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


class EtcdGateway:
    """HOST:PORT is the first member; OTHERS the rest of the cluster, tried in turn when a member is down."""

    def __init__(self, session: aiohttp.ClientSession, host: str, port: int, request_timeout: float = 5.0, *,
                 others: Sequence[tuple[str, int]] = (), tls: ssl.SSLContext | None = None,
                 credentials: EtcdCredentials | None = None) -> None:
        self._session = session
        scheme = "https" if tls is not None else "http"
        self._members = [f"{scheme}://{h}:{p}" for h, p in ((host, port), *others)]
        self._current = 0
        self._ssl: ssl.SSLContext | bool = tls if tls is not None else True
        self._credentials = credentials
        self._token: str | None = None
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)

    @property
    def _base(self) -> str:
        return self._members[self._current]

    def _next_member(self) -> None:
        self._current = (self._current + 1) % len(self._members)

    async def _headers(self, renew: bool = False) -> dict[str, str]:
        if self._credentials is None:
            return {}
        if self._token is None or renew:
            self._token = None
            reply = await self._post_once("/v3/auth/authenticate", {"name": self._credentials.user,
                                                                    "password": self._credentials.password}, {})
            token = reply.get("token")
            if not token:
                raise EtcdError("etcd authentication gave no token")
            self._token = str(token)
        return {"Authorization": self._token}

    async def _post_once(self, path: str, body: dict, headers: dict[str, str]) -> dict:
        async with self._session.post(self._base + path, json=body, timeout=self._timeout, headers=headers,
                                      ssl=self._ssl) as response:
            text = await response.text()
            if response.status == 503:
                raise aiohttp.ClientConnectionError(f"{self._base} cannot serve: {text[:200]}")
            if response.status != 200:
                raise EtcdError(f"{path} answered {response.status}: {text[:200]}")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise EtcdError(f"{path} answered non-JSON: {text[:200]}") from exc

    async def _call(self, path: str, body: dict) -> dict:
        """POST to the current member, moving on to the next one while members are down (each tried once)."""
        failures = []
        for _ in self._members:
            try:
                try:
                    return await self._post_once(path, body, await self._headers())
                except EtcdError as exc:
                    if _INVALID_TOKEN not in str(exc):
                        raise
                    return await self._post_once(path, body, await self._headers(renew=True))
            except _MEMBER_DOWN as exc:
                failures.append(f"{self._base}: {exc or type(exc).__name__}")
                self._next_member()
                self._token = None  # a token is a member's own unless the cluster uses JWT tokens
        raise EtcdError(f"{path}: no etcd member answered ({'; '.join(failures)})")

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under prefix and the store revision they were read at."""
        reply = await self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix))})
        revision = int(reply.get("header", {}).get("revision", 0))
        kvs = [KeyValue(_unb64(kv.get("key")), _unb64(kv.get("value"))) for kv in reply.get("kvs", [])]
        return kvs, revision

    async def watch_prefix(self, prefix: str, start_revision: int, read_timeout: float | None = None) -> AsyncIterator[WatchEvent]:
        """Events under prefix from start_revision on, until the stream ends or fails."""
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix)),
                                   "start_revision": str(start_revision)}}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total, sock_read=read_timeout)
        try:
            headers = await self._headers()
            response = await self._session.post(self._base + "/v3/watch", json=body, timeout=timeout,
                                                headers=headers, ssl=self._ssl)
        except _MEMBER_DOWN:
            self._next_member()  # the caller watches again, from the next member
            self._token = None
            raise
        async with response:
            if response.status != 200:
                self._next_member()
                raise EtcdError(f"/v3/watch answered {response.status}")
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise EtcdError(f"watch sent non-JSON: {line[:200]!r}") from exc
                if "error" in message:
                    raise EtcdError(f"watch failed: {message['error']}")
                result = message.get("result", {})
                if int(result.get("compact_revision", 0) or 0) > 0:
                    raise WatchCompacted(f"start revision {start_revision} compacted")
                if result.get("canceled"):
                    raise EtcdError(f"watch canceled: {result.get('cancel_reason', '')}")
                for event in result.get("events", []):
                    kv = event.get("kv", {})
                    yield WatchEvent(
                        deleted=event.get("type") == "DELETE",
                        key=_unb64(kv.get("key")),
                        value=_unb64(kv.get("value")),
                        revision=int(kv.get("mod_revision", 0) or 0),
                    )

    async def grant_lease(self, ttl_seconds: int) -> str:
        reply = await self._call("/v3/lease/grant", {"TTL": str(ttl_seconds)})
        if "ID" not in reply:
            raise EtcdError(f"lease grant gave no ID: {reply}")
        return str(reply["ID"])

    async def keep_alive(self, lease_id: str) -> int:
        """One keep-alive round; returns the remaining TTL (0 when the lease is gone)."""
        async with self._session.post(self._base + "/v3/lease/keepalive", json={"ID": lease_id},
                                      timeout=self._timeout, headers=await self._headers(),
                                      ssl=self._ssl) as response:
            if response.status != 200:
                raise EtcdError(f"keepalive answered {response.status}")
            line = await response.content.readline()
        result = json.loads(line or b"{}").get("result", {})
        return int(result.get("TTL", 0) or 0)

    async def revoke_lease(self, lease_id: str) -> None:
        await self._call("/v3/lease/revoke", {"ID": lease_id})

    async def put(self, key: str, value: str, lease_id: str | None = None) -> None:
        body: dict = {"key": _b64(key), "value": _b64(value)}
        if lease_id is not None:
            body["lease"] = lease_id
        await self._call("/v3/kv/put", body)

    async def delete(self, key: str) -> None:
        await self._call("/v3/kv/deleterange", {"key": _b64(key)})
