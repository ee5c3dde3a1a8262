"""Minimal etcd v3 client over the JSON gateway (HTTP): range, watch, put and leases; keys and values are base64."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import AsyncIterator

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


class EtcdGateway:
    def __init__(self, session: aiohttp.ClientSession, host: str, port: int, request_timeout: float = 5.0) -> None:
        self._session = session
        self._base = f"http://{host}:{port}"
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)

    async def _call(self, path: str, body: dict) -> dict:
        async with self._session.post(self._base + path, json=body, timeout=self._timeout) as response:
            text = await response.text()
            if response.status != 200:
                raise EtcdError(f"{path} answered {response.status}: {text[:200]}")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise EtcdError(f"{path} answered non-JSON: {text[:200]}") from exc

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
        async with self._session.post(self._base + "/v3/watch", json=body, timeout=timeout) as response:
            if response.status != 200:
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
                                      timeout=self._timeout) as response:
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
