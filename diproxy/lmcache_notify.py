"""Moved to diproxy/protocols/lmcache/notify.py, beside the protocol whose side service it is; this name stays for the
fake workers' import (diproxy/testing/fake_worker.py) until they import the new one."""

from diproxy.protocols.lmcache.notify import (  # noqa: F401
    NotifyListener, ProxyNotif, TransferNotices, decode_notification, encode_notification)
