"""Engine lmcache on the proxy: its protocol (protocol.py), its options (options.py) and its side service, the socket
where LMCache's senders report finished transfers (notify.py)."""

from diproxy.protocols.lmcache.options import LMCacheOptions
from diproxy.protocols.lmcache.protocol import DISAGG_SPEC, LMCacheProtocol, disagg_spec, receiver_ports

PROTOCOL = LMCacheProtocol

__all__ = ["DISAGG_SPEC", "PROTOCOL", "LMCacheOptions", "LMCacheProtocol", "disagg_spec", "receiver_ports"]
