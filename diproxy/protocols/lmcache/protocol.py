"""The LMCache protocol (LMCacheConnectorV1 with LMCache's NIXL PD backend: prefillers are senders that push the
prompt's KV to a decoder's receiver), as LMCache's XpYd proxy speaks it, with DiStack's pools, retries and timeouts.

1. The decode worker is picked FIRST, with the prefill worker: the prefiller must know where to send.
2. Prefill, alone: the client's request with max_tokens 1 (and max_completion_tokens 1 if present), stream false, no
   stream_options, no min_tokens, and kv_transfer_params {"disagg_spec": {"req_id", "receiver_host",
   "receiver_init_port", "receiver_alloc_port"}} naming that decoder's receiver (one init and one alloc port per
   decode TP rank). LMCache's sender pushes the KV there over NIXL; its answer (one token) is not shown.
3. Transfer done: each of the sender's TP ranks reports the finished transfer with LMCache's ProxyNotif{req_id} on
   the proxy's ZMQ PULL socket (--lmcache-notify-port, the senders' pd_proxy_port; notify.py beside this file).
   After prefill has answered, the request waits until --lmcache-decode-tp reports for its req_id arrived (reports
   that came before the answer count), at most --lmcache-transfer-timeout seconds. One report comes per PREFILL
   rank, and prefill rank r writes to the decoder's port of index r (pd_backend.py@07e07869,
   `receiver_init_port[self.tp_rank]`): only equal TP degrees transfer every shard, so DiStack's config rules
   require prefill TP = decode TP (model/engines/lmcache.py _one_tp) and the decode TP is the count of reports. On timeout it goes on to decode
   anyway (decode recomputes what did not land: correct, slower), counted in
   diproxy_lmcache_transfer_timeouts_total and logged at most once a minute; the request never fails for it.
4. Decode: the client's request as it came (any kv_transfer_params of the client's removed), streamed or not as
   the client asked. Its LMCache finds the prompt's KV in its receive buffer and generates the whole answer.
Both legs carry the same X-Request-Id; the disagg_spec's req_id is that id (new for every attempt). The KV went to
one decoder, so a failure before the client's first byte, prefill's or decode's, retries the pair (untried workers
first): a prefill failure is retried on another prefill worker, and a decode failure prefills again for the new
decoder. Reports for an attempt nobody waits for any more expire (bounded; notify.TransferNotices).

Receiver ports: the proxy knows a decode endpoint only by its etcd key (IP and HTTP port), so its receiver's ports
follow from the HTTP port (receiver_ports; the node must generate the receiver's pd_peer_init_port/pd_peer_alloc_port
lists by the same rule, with the same offsets and stride as the proxy's --lmcache-* flags).

Sources: LMCache/LMCache examples/disagg_prefill/xpyd/disagg_proxy_server_first_token_from_decoder_xpyd.py@c5f9daee
(decode picked first; prefill gets max_tokens 1, max_completion_tokens 1 if present, and kv_transfer_params.
disagg_spec {req_id, receiver_host, receiver_init_port, receiver_alloc_port}; decode gets the request unchanged),
examples/disagg_prefill/disagg_proxy_server.py@00482afc (the proxy the xpyd README@41219a0c runs: disagg_spec sent
with one decoder too, stream false and stream_options popped for prefill, one port per decode TP rank as
num_tp_rank = len(init_port); zmq_pull_server and wait_decode_kv_ready: decode only after num_tp_rank ProxyNotif
for the req_id, waited for without a bound), examples/disagg_prefill/xpyd/README.md@41219a0c (TP: "different ports
are required for different TP ranks"; the proxy's --decoder-init-port/--decoder-alloc-port must match the decoder's
config), lmcache/v1/storage_backend/pd_backend.py@07e07869 (ProxyNotif, sent by every sender rank over zmq.PUSH to
pd_proxy_host:pd_proxy_port when the last prefill chunk's KV is written).
Unverified on hardware: that the senders' reports arrive as the sources say (the fake workers send them the same
way); a wrong --lmcache-decode-tp shows as transfer timeouts (too high) or early decodes (too low)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

from aiohttp import web

from diproxy import load
from diproxy.metrics import Counter, Metric
from diproxy.protocols.base import EngineProtocol, SideService
from diproxy.protocols.lmcache.notify import NotifyListener, TransferNotices
from diproxy.protocols.lmcache.options import OPTIONS, LMCacheOptions
from diproxy.protocols.nixl import answer_from_decode, decode_request, prefill_request
from diproxy.routing import Call, Router, new_uid
from diproxy.workers import DECODE, PREFILL, Worker

log = logging.getLogger(__name__)

DISAGG_SPEC = "disagg_spec"


def receiver_ports(http_port: int, tp: int, init_offset: int = 1000, alloc_offset: int = 2000,
                   stride: int = 100) -> tuple[list[int], list[int]]:
    """The LMCache receiver's init and alloc ports of the decode endpoint serving HTTP on http_port, one per TP rank."""
    ranks = range(tp)
    return ([http_port + init_offset + stride * r for r in ranks],
            [http_port + alloc_offset + stride * r for r in ranks])


def disagg_spec(req_id: str, decode_host: str, init_ports: list[int], alloc_ports: list[int]) -> dict[str, Any]:
    return {"req_id": req_id, "receiver_host": decode_host, "receiver_init_port": list(init_ports),
            "receiver_alloc_port": list(alloc_ports)}


class LMCacheProtocol(EngineProtocol):
    name = "lmcache"
    roles = (PREFILL, DECODE)
    phases = {load.PREFILL: PREFILL, load.DECODE: DECODE}
    summary = ("decode picked first, prefill (max_tokens 1) told its receiver in kv_transfer_params.disagg_spec, "
               "then the request to decode (LMCache XpYd over NIXL)")

    options = OPTIONS
    options_type = LMCacheOptions

    TIMEOUT_LOG_INTERVAL = 60.0

    def __init__(self, options: LMCacheOptions | None = None) -> None:
        super().__init__(options or LMCacheOptions())
        self.engine_options: LMCacheOptions
        # LMCache's transfer-done reports, once the side service listens (side_services); None: no wait.
        self.notices: TransferNotices | None = None
        self.listener: NotifyListener | None = None
        self.transfer_timeouts = Counter(
            "diproxy_lmcache_transfer_timeouts_total",
            "LMCache: requests sent to decode before every decode TP rank's transfer-done report arrived "
            "(--lmcache-transfer-timeout); decode recomputed what had not landed.")
        self._timeouts_unlogged = 0
        self._timeout_logged_at = float("-inf")

    @property
    def metrics(self) -> Sequence[Metric]:
        return (self.transfer_timeouts,)

    def side_services(self, host: str, count_error: Callable[[str], None]) -> Sequence[SideService]:
        """The socket LMCache's senders report finished KV transfers to (notify.py)."""
        self.notices = TransferNotices()
        self.listener = NotifyListener(host, self.engine_options.notify_port, self.notices,
                                       lambda: count_error("lmcache_notify_malformed"))
        return (self.listener,)

    async def serve(self, router: Router, call: Call) -> web.StreamResponse:
        return await router.attempt(call, self.roles, lambda workers: self._pair(router, call, *workers))

    def spec_for(self, router: Router, uid: str, decode: Worker) -> dict[str, Any]:
        o = self.engine_options
        init_ports, alloc_ports = receiver_ports(decode.port, o.decode_tp, o.init_port_offset, o.alloc_port_offset,
                                                 o.rank_port_stride)
        return disagg_spec(uid, decode.host, init_ports, alloc_ports)

    async def _pair(self, router: Router, call: Call, prefill: Worker, decode: Worker) -> web.StreamResponse:
        router.enter(call, load.PREFILL)  # a retried pair prefills again, for its own decoder
        uid = new_uid()
        log.debug("routing %s: prefill %s -> receiver decode %s", call.client_id(uid), prefill.address,
                  decode.address)
        # An error object fails the attempt; the one token itself is not shown.
        spec = {DISAGG_SPEC: self.spec_for(router, uid, decode)}
        await router.one_token_answer(prefill, call.path, prefill_request(call.body, spec), uid)
        await self.transfer_done(router, uid)
        router.enter(call, load.DECODE)
        return await answer_from_decode(router, call, decode, decode_request(call.body), uid)

    async def transfer_done(self, router: Router, uid: str) -> None:
        """Wait for every decode TP rank's transfer-done report for uid, bounded; never fails the request."""
        if self.notices is None:
            return
        o = self.engine_options
        needed = o.decode_tp
        got = await self.notices.wait(uid, needed, o.transfer_timeout)
        if got >= needed:
            return
        self.transfer_timeouts.inc()
        self._timeouts_unlogged += 1
        now = time.monotonic()
        if now - self._timeout_logged_at >= self.TIMEOUT_LOG_INTERVAL:
            log.warning("LMCache: %d request(s) went to decode without every KV transfer reported done within %.1f s "
                        "(latest %s: %d of %d reports); decode recomputes what did not land. Check the senders' "
                        "pd_proxy_host/pd_proxy_port and --lmcache-decode-tp", self._timeouts_unlogged,
                        o.transfer_timeout, uid, got, needed)
            self._timeouts_unlogged = 0
            self._timeout_logged_at = now
