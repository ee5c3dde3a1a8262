"""Engine lmcache: LMCache's "transfer done" notifications, received on a ZMQ PULL socket, and the per-request wait
for them before decode.

The wire format is LMCache's own, decoded with LMCache's own libraries (pyzmq, msgspec):
- Sender side, LMCache/LMCache lmcache/v1/storage_backend/pd_backend.py@07e07869: `class PDMsgBase(msgspec.Struct,
  tag=True)`, `class ProxyNotif(PDMsgBase): req_id: str`; every prefill TP rank (PDBackend, one per rank) connects a
  zmq.PUSH socket to tcp://{pd_proxy_host}:{pd_proxy_port} (_init_sender) and, once its KV is written to the
  decoder (batched_submit_put_task, `if transfer_spec.is_last_prefill`), sends
  `msgspec.msgpack.encode(ProxyNotif(req_id=transfer_spec.req_id))` as one frame. With msgspec's defaults
  (tag=True: the tag is the class name, under the field "type") that is the msgpack map
  {"type": "ProxyNotif", "req_id": REQ_ID}; REQ_ID is the disagg_spec's req_id the proxy sent to prefill.
- Proxy side, LMCache/LMCache examples/disagg_prefill/disagg_proxy_server.py@00482afc: zmq_pull_server binds a
  zmq.asyncio PULL socket on tcp://{proxy_host}:{proxy_port}, decodes each message with
  `msgspec.msgpack.decode(msg_bytes, type=PDMsg)`, and counts `finished_reqs[req_id] += 1`; wait_decode_kv_ready
  polls until the count reaches num_tp_rank = len(decode receiver init ports), with no timeout, then pops it.
  examples/disagg_prefill/xpyd/disagg_proxy_server_first_token_from_decoder_xpyd.py@c5f9daee does the same with
  a set (one rank) and decodes `NixlMsg` of lmcache/v1/storage_backend/connector/nixl_connector_v3.py, whose
  proxy message is `NixlProxyNotif(NixlMsgBase): req_id: str` (tag "NixlProxyNotif"); both tags are accepted.
  Its default port is 7500 (--nixl-proxy-port), which the nodes' pd_proxy_port uses.

Unlike LMCache's proxies, which wait forever and keep counts of unclaimed ids forever, the wait here is bounded
(--lmcache-transfer-timeout; on timeout decode goes ahead and recomputes what did not land) and counts that no
request claims expire (after PENDING_TTL seconds, at most MAX_PENDING kept; vllm-project/production-stack's router
keeps LMCache's finished request ids 120 s, NixlConfig.finished_req_ttl). A notification can arrive before prefill's
HTTP answer (LMCache sends it while the request is still being served), so counts are kept for ids nobody waits for
yet."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Callable, Union

import msgspec
import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

PENDING_TTL = 120.0
MAX_PENDING = 65536
MAX_MESSAGE_BYTES = 64 * 1024  # a ProxyNotif is tens of bytes; ZMQ drops a peer that sends more than this
_REQ_ID = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class ProxyNotif(msgspec.Struct, tag=True):
    """LMCache's pd_backend.ProxyNotif (tag "ProxyNotif", tag field "type")."""

    req_id: _REQ_ID


class NixlProxyNotif(msgspec.Struct, tag=True):
    """The same message of LMCache's earlier nixl_connector_v3 (tag "NixlProxyNotif")."""

    req_id: _REQ_ID


_DECODER = msgspec.msgpack.Decoder(Union[ProxyNotif, NixlProxyNotif])


def decode_notification(raw: bytes) -> str:
    """The req_id of one LMCache notification frame; msgspec.DecodeError (a ValidationError too) when it is not one."""
    return _DECODER.decode(raw).req_id


def encode_notification(req_id: str) -> bytes:
    """What an LMCache sender puts on the wire (the fake workers send it)."""
    return msgspec.msgpack.encode(ProxyNotif(req_id=req_id))


@dataclass
class _Waiter:
    needed: int
    count: int
    event: asyncio.Event = field(default_factory=asyncio.Event)


class TransferNotices:
    """Notification counts by req_id: waited for by the request that sent the id, or kept (bounded, expiring) for
    one that has not started waiting yet."""

    def __init__(self, ttl: float = PENDING_TTL, max_pending: int = MAX_PENDING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.max_pending, self.clock = ttl, max_pending, clock
        self._pending: OrderedDict[str, tuple[int, float]] = OrderedDict()  # req_id -> (count, first arrival)
        self._waiters: dict[str, _Waiter] = {}
        self.unclaimed = 0  # counts dropped (expired or pushed out) with no request waiting for them

    def __len__(self) -> int:
        return len(self._pending)

    def arrived(self, req_id: str) -> None:
        waiter = self._waiters.get(req_id)
        if waiter is not None:
            waiter.count += 1
            if waiter.count >= waiter.needed:
                waiter.event.set()
            return
        now = self.clock()
        self._expire(now)
        count, first = self._pending.get(req_id, (0, now))
        if not count and len(self._pending) >= self.max_pending:
            self._pending.popitem(last=False)
            self.unclaimed += 1
        self._pending[req_id] = (count + 1, first)  # an existing id keeps its place (expiry by first arrival)

    def _expire(self, now: float) -> None:
        while self._pending:
            req_id, (_, first) = next(iter(self._pending.items()))
            if now - first < self.ttl:
                return
            del self._pending[req_id]
            self.unclaimed += 1

    async def wait(self, req_id: str, needed: int, timeout: float) -> int:
        """Wait until needed notifications for req_id arrived (counting those that came before), at most timeout
        seconds; the number that arrived. Later ones are kept as unclaimed and expire."""
        count = self._pending.pop(req_id, (0, 0.0))[0]
        if count >= needed:
            return count
        waiter = self._waiters[req_id] = _Waiter(needed, count)
        try:
            async with asyncio.timeout(timeout):
                await waiter.event.wait()
        except TimeoutError:
            pass
        finally:
            del self._waiters[req_id]
        return waiter.count


class NotifyListener:
    """The PULL socket LMCache's senders push to, in the proxy's event loop (zmq.asyncio): engine lmcache's side
    service (diproxy/protocols/base.py SideService)."""

    name = "lmcache-notify"

    def __init__(self, host: str, port: int, notices: TransferNotices,
                 on_malformed: Callable[[], None] = lambda: None) -> None:
        self.host, self.port, self.notices, self.on_malformed = host, port, notices, on_malformed
        self.received = 0
        self.malformed = 0
        self._last_malformed_log = float("-inf")
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None

    def start(self) -> None:
        """Bind (port 0: a free port, then self.port says which); a taken port fails the proxy's start, loudly."""
        self._context = zmq.asyncio.Context()
        sock = self._socket = self._context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        host = self.host
        if ":" in host:  # IPv6
            sock.setsockopt(zmq.IPV6, 1)
            host = f"[{host.strip('[]')}]"
        try:
            sock.bind(f"tcp://{host}:{self.port or '*'}")
        except zmq.ZMQError:
            self.close()
            raise
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(endpoint.rsplit(":", 1)[1])
        log.info("LMCache transfer notifications: PULL socket on %s", endpoint)

    async def run(self) -> None:
        assert self._socket is not None
        while True:
            try:
                frames = await self._socket.recv_multipart(copy=True)
            except zmq.ZMQError:  # not expected on a bound PULL socket; the wait's timeout covers the gap
                log.exception("LMCache notification socket: receive failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            self.handle(frames)

    def handle(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 1:
                raise msgspec.DecodeError(f"{len(frames)} frames, LMCache sends one")
            req_id = decode_notification(frames[0])
        except msgspec.DecodeError as exc:
            self.malformed += 1
            self.on_malformed()
            now = time.monotonic()
            if now - self._last_malformed_log >= 60.0:
                self._last_malformed_log = now
                log.warning("ignored a message on the LMCache notification port that is not LMCache's ProxyNotif "
                            "(%s); %d so far", exc, self.malformed)
            return
        self.received += 1
        self.notices.arrived(req_id)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None
