"""Engine lmcache's proxy options: where a decode endpoint's LMCache receiver listens, derived from its HTTP port as
the node derives it (userdata/engines/lmcache.sh; the synth writes both from model/engines/lmcache.py), the decode TP,
and the socket LMCache's senders report finished transfers to."""

from __future__ import annotations

from dataclasses import dataclass

from diproxy.protocols.base import Option


@dataclass(frozen=True)
class LMCacheOptions:
    """--lmcache-* (DIPROXY_LMCACHE_*) values."""

    init_port_offset: int = 1000
    alloc_port_offset: int = 2000
    rank_port_stride: int = 100
    decode_tp: int = 1
    # The PULL socket LMCache's senders push "transfer done" to (their pd_proxy_port; 7500 as in LMCache's xpyd proxy,
    # --nixl-proxy-port), and how long a request waits for it after prefill before decoding anyway (LMCache's proxies
    # wait without a bound; diproxy/protocols/lmcache/notify.py).
    notify_port: int = 7500
    transfer_timeout: float = 5.0


_DEFAULT = LMCacheOptions()

OPTIONS = (
    Option("init_port_offset", int, _DEFAULT.init_port_offset,
           "a decode endpoint's LMCache receiver init port of TP rank 0 is its HTTP port + this"),
    Option("alloc_port_offset", int, _DEFAULT.alloc_port_offset,
           "its receiver alloc port of TP rank 0 is its HTTP port + this"),
    Option("rank_port_stride", int, _DEFAULT.rank_port_stride, "TP rank r's receiver ports are rank 0's + r * this"),
    Option("decode_tp", int, _DEFAULT.decode_tp,
           "tensor-parallel size of the decode endpoints (one receiver port pair per rank)",
           lambda value: value >= 1, "must be at least 1"),
    Option("notify_port", int, _DEFAULT.notify_port,
           "port of the ZMQ PULL socket (on --host) where LMCache's prefill senders report a finished KV transfer "
           "(their pd_proxy_port; 0 picks a free port)",
           lambda value: 0 <= value <= 65535, "must be a port number (0: a free one)"),
    Option("transfer_timeout", float, _DEFAULT.transfer_timeout,
           "seconds a request waits after prefill for every decode TP rank's transfer-done report; then decode goes "
           "ahead anyway (and recomputes what did not arrive)",
           lambda value: value >= 0, "must not be negative"),
)
